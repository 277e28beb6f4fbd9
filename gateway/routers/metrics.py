"""GET /metrics: Prometheus text format (gateway/metrics.py).

Who may read it: with API keys, an admin key only (the figures span every tenant); without
keys (the embedded loopback mode), only a client on this machine's loopback.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from corral.api_keys import is_loopback
from corral.internal.v1 import registry_pb2, registry_pb2_grpc
from gateway.auth import CallerDep, identity
from gateway.backends import upstream
from gateway.deps import BackendsDep
from gateway.errors import ApiError
from gateway.metrics import GatewayMetrics
from gateway.views import UPSTREAM, errors

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    name="metrics",
    summary="Prometheus metrics (admin key; without keys, loopback clients only)",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format."},
        **errors(401, 403, *UPSTREAM),
    },
)
async def metrics(request: Request, backends: BackendsDep, caller: CallerDep) -> Response:
    who = await identity(backends, caller)
    if who.keys_required and not who.admin:
        raise ApiError(403, "permission_denied", "/metrics needs an admin API key (it spans every tenant)")
    client = request.client.host if request.client is not None else ""
    if not who.keys_required and not is_loopback(client):
        raise ApiError(
            403, "permission_denied", "/metrics answers loopback clients only while the deployment has no API keys"
        )
    collected: GatewayMetrics = request.app.state.metrics
    async with upstream("scheduler"):
        reply = await registry_pb2_grpc.ExecutorRegistryServiceStub(backends.scheduler_channel).ListExecutors(
            registry_pb2.ListExecutorsRequest(include_network_counters=True), timeout=backends.timeout
        )
    collected.executors.executors = reply.executors
    collected.executors.queued_tasks = reply.queued_tasks
    return Response(generate_latest(collected.registry), media_type=CONTENT_TYPE_LATEST)
