"""ExecutorRegistryService (corral.internal.v1) over gRPC, served by the scheduler: executors
register and heartbeat here, operators list them. Thin over Scheduler; its corral.errors
exceptions become status codes in the server's interceptor."""

from __future__ import annotations

from corral.grpc_server import Context
from corral.internal.v1 import registry_pb2, registry_pb2_grpc

from .core import Scheduler


class ExecutorRegistryServicer(registry_pb2_grpc.ExecutorRegistryServiceServicer):
    def __init__(self, scheduler: Scheduler, heartbeat_interval: float) -> None:
        self._scheduler = scheduler
        self._heartbeat_interval = heartbeat_interval

    async def RegisterExecutor(
        self, request: registry_pb2.RegisterExecutorRequest, context: Context
    ) -> registry_pb2.RegisterExecutorResponse:
        stale = await self._scheduler.register_executor(
            request.executor_id, request.address, request.capacity, request.driver, list(request.sandbox_ids)
        )
        record = self._scheduler.executors.get(request.executor_id)
        if record is not None:
            record.max_sandboxes = request.max_sandboxes
        return registry_pb2.RegisterExecutorResponse(
            heartbeat_interval_seconds=self._heartbeat_interval, stale_sandbox_ids=stale
        )

    async def Heartbeat(
        self, request: registry_pb2.HeartbeatRequest, context: Context
    ) -> registry_pb2.HeartbeatResponse:
        return registry_pb2.HeartbeatResponse(known=self._scheduler.heartbeat(request.executor_id))

    async def ListExecutors(
        self, request: registry_pb2.ListExecutorsRequest, context: Context
    ) -> registry_pb2.ListExecutorsResponse:
        placed = await self._scheduler.sandboxes.placed() if self._scheduler.sandboxes is not None else {}
        infos = [e.info() for e in self._scheduler.executors.all()]
        for info in infos:
            info.sandboxes = placed.get(info.executor_id, 0)
        return registry_pb2.ListExecutorsResponse(executors=infos)
