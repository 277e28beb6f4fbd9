"""ExecutorService over gRPC: a thin layer over TaskRunner."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from corral.grpc_server import Context
from corral.v1 import executor_pb2, executor_pb2_grpc
from services.executor.drivers.base import SandboxError
from services.executor.runner import TASK_ID_PATTERN, AlreadyRunning, AtCapacity, InvalidTask, TaskRunner
from services.executor.sandboxes import SandboxExists, SandboxNotFound


class ExecutorServicer(executor_pb2_grpc.ExecutorServiceServicer):
    def __init__(self, runner: TaskRunner) -> None:
        self.runner = runner

    async def RunTask(
        self,
        request: executor_pb2.RunTaskRequest,
        context: grpc.aio.ServicerContext[executor_pb2.RunTaskRequest, executor_pb2.RunTaskResponse],
    ) -> AsyncIterator[executor_pb2.RunTaskResponse]:
        try:
            run = self.runner.start(request.task_id, request.spec)
        except InvalidTask as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except AlreadyRunning as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        except AtCapacity as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        # aclosing: when the client goes away mid-stream, the run's cleanup (killing the
        # sandbox) happens now, not whenever the generator is collected.
        async with contextlib.aclosing(run.events()) as events:
            async for event in events:
                yield executor_pb2.RunTaskResponse(event=event)

    async def CancelTask(
        self,
        request: executor_pb2.ExecutorCancelTaskRequest,
        context: grpc.aio.ServicerContext[
            executor_pb2.ExecutorCancelTaskRequest, executor_pb2.ExecutorCancelTaskResponse
        ],
    ) -> executor_pb2.ExecutorCancelTaskResponse:
        found = self.runner.cancel(request.task_id, request.reason)
        return executor_pb2.ExecutorCancelTaskResponse(found=found)

    async def GetExecutorStatus(
        self,
        request: executor_pb2.GetExecutorStatusRequest,
        context: grpc.aio.ServicerContext[
            executor_pb2.GetExecutorStatusRequest, executor_pb2.GetExecutorStatusResponse
        ],
    ) -> executor_pb2.GetExecutorStatusResponse:
        return executor_pb2.GetExecutorStatusResponse(
            executor_id=self.runner.executor_id,
            driver=self.runner.driver.name,
            capacity=self.runner.capacity,
            running_task_ids=self.runner.running_task_ids,
        )

    # --- long-lived sandboxes ----------------------------------------------------------------

    async def CreateSandbox(
        self, request: executor_pb2.ExecutorCreateSandboxRequest, context: Context
    ) -> executor_pb2.ExecutorCreateSandboxResponse:
        if not TASK_ID_PATTERN.match(request.sandbox_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid sandbox id {request.sandbox_id!r}")
        try:
            managed = await self.runner.sandboxes.create(
                request.sandbox_id, request.spec, request.expires_at.ToNanoseconds() / 1e9
            )
        except SandboxExists as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
            raise
        except SandboxError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise
        return executor_pb2.ExecutorCreateSandboxResponse(
            host_run_dir=str(managed.host_run_dir), host_tasks_dir=str(managed.host_tasks_dir)
        )

    async def DeleteSandbox(
        self, request: executor_pb2.ExecutorDeleteSandboxRequest, context: Context
    ) -> executor_pb2.ExecutorDeleteSandboxResponse:
        found = await self.runner.sandboxes.delete(request.sandbox_id, "deleted by request")
        return executor_pb2.ExecutorDeleteSandboxResponse(found=found)

    async def ExtendSandbox(
        self, request: executor_pb2.ExecutorExtendSandboxRequest, context: Context
    ) -> executor_pb2.ExecutorExtendSandboxResponse:
        try:
            self.runner.sandboxes.extend(request.sandbox_id, request.expires_at.ToNanoseconds() / 1e9)
        except SandboxNotFound:
            return executor_pb2.ExecutorExtendSandboxResponse(found=False)
        return executor_pb2.ExecutorExtendSandboxResponse(found=True)

    async def StartJupyter(
        self, request: executor_pb2.ExecutorStartJupyterRequest, context: Context
    ) -> executor_pb2.ExecutorStartJupyterResponse:
        try:
            socket = await self.runner.sandboxes.start_jupyter(request.sandbox_id, request.base_url or "/")
        except SandboxNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            raise
        except SandboxError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise
        return executor_pb2.ExecutorStartJupyterResponse(host_socket=str(socket))
