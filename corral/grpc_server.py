"""The shape every Corral gRPC server shares: reflection, health, graceful stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeAlias

import grpc
import structlog
from grpc_health.v1 import _async as health_aio  # the asyncio servicer (health.aio)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = structlog.get_logger()

# The servicer context type every handler takes (grpc-stubs makes it generic).
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

# Generous message limits: outputs and files travel in single messages.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def new_server() -> grpc.aio.Server:
    return grpc.aio.server(options=CHANNEL_OPTIONS)


def add_reflection_and_health(
    server: grpc.aio.Server, service_names: Iterable[str]
) -> health_aio.HealthServicer:
    """Registers reflection (for grpcurl) and health (for probes); marks services SERVING."""
    names = list(service_names)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*names, reflection.SERVICE_NAME, health.SERVICE_NAME], server)
    return health_servicer


async def mark_serving(health_servicer: health_aio.HealthServicer, service_names: Iterable[str]) -> None:
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


def bind(server: grpc.aio.Server, address: str) -> int:
    """Binds `address` (host:port or unix:path); fails loudly when the port is taken."""
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc raises RuntimeError when binding fails
        raise SystemExit(f"cannot listen on {address}: {exc}") from exc
    if port == 0 and not address.startswith("unix:"):
        raise SystemExit(f"cannot listen on {address}: address in use or unavailable")
    return port


async def run_until_signalled(
    server: grpc.aio.Server,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    grace: float = 5.0,
) -> None:
    """Waits for SIGINT/SIGTERM, then stops the server gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    done = asyncio.ensure_future(server.wait_for_termination())
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait({done, waiter}, return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping", grace=grace)
    if on_stop is not None:
        await on_stop()
    await server.stop(grace)
    waiter.cancel()


def insecure_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
