"""ExecutorService over gRPC: a thin layer over TaskRunner."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from corral.v1 import executor_pb2, executor_pb2_grpc
from services.executor.runner import AlreadyRunning, AtCapacity, InvalidTask, TaskRunner


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
