"""ExecutorRegistryService (corral.internal.v1) over gRPC, served by the scheduler: executors
register and heartbeat here, operators list them. Thin over Scheduler; its corral.errors
exceptions become status codes in the server's interceptor."""

from __future__ import annotations

import asyncio

import grpc

from corral.grpc_server import Context
from corral.internal.v1 import executor_pb2, registry_pb2, registry_pb2_grpc
from corral.v1 import task_pb2

from .core import Scheduler
from .executors import ExecutorRecord


class ExecutorRegistryServicer(registry_pb2_grpc.ExecutorRegistryServiceServicer):
    def __init__(self, scheduler: Scheduler, heartbeat_interval: float) -> None:
        self._scheduler = scheduler
        self._heartbeat_interval = heartbeat_interval

    async def RegisterExecutor(
        self, request: registry_pb2.RegisterExecutorRequest, context: Context
    ) -> registry_pb2.RegisterExecutorResponse:
        stale, drop = await self._scheduler.register_executor(
            request.executor_id, request.address, request.capacity, request.driver, list(request.sandbox_ids),
            list(request.held_tasks),
        )
        record = self._scheduler.executors.get(request.executor_id)
        if record is not None:
            record.max_sandboxes = request.max_sandboxes
        return registry_pb2.RegisterExecutorResponse(
            heartbeat_interval_seconds=self._heartbeat_interval, stale_sandbox_ids=stale, drop_task_ids=drop,
            leader_epoch=self._scheduler.leader_epoch,
        )

    async def Heartbeat(
        self, request: registry_pb2.HeartbeatRequest, context: Context
    ) -> registry_pb2.HeartbeatResponse:
        return registry_pb2.HeartbeatResponse(known=self._scheduler.heartbeat(request.executor_id))

    async def ListExecutors(
        self, request: registry_pb2.ListExecutorsRequest, context: Context
    ) -> registry_pb2.ListExecutorsResponse:
        placed = await self._scheduler.sandboxes.placed() if self._scheduler.sandboxes is not None else {}
        executors = self._scheduler.executors.all()
        infos = [e.info() for e in executors]
        for info in infos:
            info.sandboxes = placed.get(info.executor_id, 0)
        if request.include_network_counters:
            await asyncio.gather(*(_add_network_counters(e, info) for e, info in zip(executors, infos, strict=True)))
        queued = (await self._scheduler.store.count_by_state()).get(task_pb2.TASK_STATE_SCHEDULED, 0)
        return registry_pb2.ListExecutorsResponse(executors=infos, queued_tasks=queued)


STATUS_TIMEOUT_SECONDS = 3.0


async def _add_network_counters(executor: ExecutorRecord, info: registry_pb2.ExecutorInfo) -> None:
    """The executor's refused-connection and lookup totals and its undelivered history, 0 when
    it does not answer (a scrape of /metrics must not hang on one executor)."""
    if not executor.alive:
        return
    try:
        status = await executor.stub.GetExecutorStatus(
            executor_pb2.GetExecutorStatusRequest(), timeout=STATUS_TIMEOUT_SECONDS
        )
    except grpc.aio.AioRpcError:
        return
    info.network_refused_connections = status.network_refused_connections
    info.network_refused_lookups = status.network_refused_lookups
    info.history_undelivered_bytes = status.history_undelivered_bytes
    info.history_dropped = status.history_dropped
