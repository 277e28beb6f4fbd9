"""ExecutorService (corral.internal.v1) over gRPC: a thin layer over TaskRunner. What the
runner raises (corral.errors classes) becomes a status code in the server's interceptor."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from corral.errors import FailedPrecondition, InvalidArgument, SandboxNotFound
from corral.grpc_server import Context
from corral.internal.v1 import executor_pb2, executor_pb2_grpc
from services.executor.calls_servicer import SandboxCallsServicer
from services.executor.runner import TASK_ID_PATTERN, TaskRunner
from services.executor.sandbox_calls import SandboxCalls


class ExecutorServicer(SandboxCallsServicer, executor_pb2_grpc.ExecutorServiceServicer):
    def __init__(self, runner: TaskRunner) -> None:
        self.runner = runner
        self.calls = SandboxCalls(runner.settings, runner.sandboxes, runner.history)

    async def RunTask(
        self, request: executor_pb2.RunTaskRequest, context: Context
    ) -> AsyncIterator[executor_pb2.RunTaskResponse]:
        # DeposedScheduler, InvalidTask, AlreadyRunning, AtCapacity, StaleAssignment
        self.runner.check_leader(request.leader_epoch)
        run = self.runner.start(request.task_id, request.spec, request.epoch)
        # aclosing: when the client goes away mid-stream, the run is orphaned now (it goes on
        # for the grace), not whenever the generator is collected.
        async with contextlib.aclosing(run.events()) as events:
            async for event in events:
                yield executor_pb2.RunTaskResponse(event=event)

    async def AttachTask(
        self, request: executor_pb2.AttachTaskRequest, context: Context
    ) -> AsyncIterator[executor_pb2.AttachTaskResponse]:
        self.runner.check_leader(request.leader_epoch)  # DeposedScheduler
        run = self.runner.attach(request.task_id, request.epoch)  # TaskNotHeld, StaleAssignment
        async with contextlib.aclosing(run.events(max(0, request.after_sequence))) as events:
            async for event in events:
                yield executor_pb2.AttachTaskResponse(event=event)

    async def CancelTask(
        self, request: executor_pb2.CancelTaskRequest, context: Context
    ) -> executor_pb2.CancelTaskResponse:
        self.runner.check_leader(request.leader_epoch)  # DeposedScheduler
        found = self.runner.cancel(request.task_id, request.reason)
        return executor_pb2.CancelTaskResponse(found=found)

    async def GetExecutorStatus(
        self, request: executor_pb2.GetExecutorStatusRequest, context: Context
    ) -> executor_pb2.GetExecutorStatusResponse:
        refused_connections, refused_lookups = await self.runner.sandboxes.network.totals()
        history = self.runner.history
        return executor_pb2.GetExecutorStatusResponse(
            executor_id=self.runner.executor_id,
            driver=self.runner.driver.name,
            capacity=self.runner.capacity,
            running_task_ids=self.runner.running_task_ids,
            sandbox_limits=self._sandbox_limits(),
            network_refused_connections=refused_connections,
            network_refused_lookups=refused_lookups,
            history_undelivered_bytes=history.undelivered_bytes if history is not None else 0,
            history_dropped=history.dropped if history is not None else 0,
        )

    def _sandbox_limits(self) -> str:
        """What bounds the host's memory and pids, then its disk (task_fs.py), in words."""
        driver = self.runner.driver
        disk = driver.task_fs.description if driver.task_fs is not None else ""
        return "; ".join(words for words in (driver.limits_description, disk) if words)

    # --- long-lived sandboxes ----------------------------------------------------------------

    async def CreateSandbox(
        self, request: executor_pb2.CreateSandboxRequest, context: Context
    ) -> executor_pb2.CreateSandboxResponse:
        if not TASK_ID_PATTERN.match(request.sandbox_id):
            raise InvalidArgument(f"invalid sandbox id {request.sandbox_id!r}")
        managed = await self.runner.sandboxes.create(  # SandboxExists, SandboxStartFailed
            request.sandbox_id, request.spec, request.expires_at.ToNanoseconds() / 1e9
        )
        return executor_pb2.CreateSandboxResponse(
            host_run_dir=str(managed.host_run_dir), host_tasks_dir=str(managed.host_tasks_dir)
        )

    async def DeleteSandbox(
        self, request: executor_pb2.DeleteSandboxRequest, context: Context
    ) -> executor_pb2.DeleteSandboxResponse:
        found = await self.runner.sandboxes.delete(request.sandbox_id, "deleted by request")
        return executor_pb2.DeleteSandboxResponse(found=found)

    async def ExtendSandbox(
        self, request: executor_pb2.ExtendSandboxRequest, context: Context
    ) -> executor_pb2.ExtendSandboxResponse:
        try:
            self.runner.sandboxes.extend(request.sandbox_id, request.expires_at.ToNanoseconds() / 1e9)
        except SandboxNotFound:
            return executor_pb2.ExtendSandboxResponse(found=False)
        return executor_pb2.ExtendSandboxResponse(found=True)

    async def StartJupyter(
        self, request: executor_pb2.StartJupyterRequest, context: Context
    ) -> executor_pb2.StartJupyterResponse:
        socket = await self.runner.sandboxes.start_jupyter(request.sandbox_id, request.base_url or "/")
        return executor_pb2.StartJupyterResponse(host_socket=str(socket))

    async def UpdateSandboxNetwork(
        self, request: executor_pb2.UpdateSandboxNetworkRequest, context: Context
    ) -> executor_pb2.UpdateSandboxNetworkResponse:
        managed = self.runner.sandboxes.get(request.sandbox_id)  # SandboxNotFound
        if not managed.spec.network:
            raise FailedPrecondition(f"sandbox {request.sandbox_id} was created without network")
        status = await self.runner.sandboxes.update_network(request.sandbox_id, request.rules)
        return executor_pb2.UpdateSandboxNetworkResponse(status=status.to_proto())

    async def GetSandboxNetwork(
        self, request: executor_pb2.GetSandboxNetworkRequest, context: Context
    ) -> executor_pb2.GetSandboxNetworkResponse:
        status = await self.runner.sandboxes.network_status(request.sandbox_id)  # SandboxNotFound
        reply = executor_pb2.GetSandboxNetworkResponse()
        if status is not None:
            reply.status.CopyFrom(status.to_proto())
        return reply
