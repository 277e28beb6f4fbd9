"""SchedulerService over gRPC: translates requests to Scheduler calls and errors to status codes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from corral.grpc_server import Context
from corral.steps import InvalidStep as InvalidTask
from corral.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2

from .core import Scheduler, TaskAlreadyFinished, TaskNotFound
from .sandboxes import SandboxEnded, SandboxNotFound

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def _require_task_id(task_id: str) -> str:
    if not task_id:
        raise InvalidTask("task_id is required")
    return task_id


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, scheduler: Scheduler, heartbeat_interval: float) -> None:
        self._scheduler = scheduler
        self._heartbeat_interval = heartbeat_interval

    async def _abort_for(self, exc: Exception, context: Context) -> None:
        if isinstance(exc, TaskNotFound):
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        if isinstance(exc, TaskAlreadyFinished):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        if isinstance(exc, (InvalidTask, ValueError)):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        raise exc

    async def SubmitTask(
        self, request: scheduler_pb2.SubmitTaskRequest, context: Context
    ) -> scheduler_pb2.SubmitTaskResponse:
        try:
            task = await self._scheduler.submit(request.spec)
        except InvalidTask as exc:
            await self._abort_for(exc, context)
            raise
        except SandboxNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            raise
        except SandboxEnded as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise
        return scheduler_pb2.SubmitTaskResponse(task_id=task.task_id, task=task)

    async def GetTask(
        self, request: scheduler_pb2.GetTaskRequest, context: Context
    ) -> scheduler_pb2.GetTaskResponse:
        try:
            task = await self._scheduler.get(_require_task_id(request.task_id))
        except (TaskNotFound, InvalidTask) as exc:
            await self._abort_for(exc, context)
            raise
        return scheduler_pb2.GetTaskResponse(task=task)

    async def ListTasks(
        self, request: scheduler_pb2.ListTasksRequest, context: Context
    ) -> scheduler_pb2.ListTasksResponse:
        if request.page_size < 0 or request.page_size > MAX_PAGE_SIZE:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"page_size must be between 0 and {MAX_PAGE_SIZE}"
            )
        if request.state not in task_pb2.TaskState.values():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown state {request.state}")
        try:
            tasks, token = await self._scheduler.list_tasks(
                request.state, request.page_size or DEFAULT_PAGE_SIZE, request.page_token
            )
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_token is not valid")
            raise
        return scheduler_pb2.ListTasksResponse(tasks=tasks, next_page_token=token)

    async def CancelTask(
        self, request: scheduler_pb2.CancelTaskRequest, context: Context
    ) -> scheduler_pb2.CancelTaskResponse:
        try:
            task = await self._scheduler.cancel(_require_task_id(request.task_id))
        except (TaskNotFound, TaskAlreadyFinished, InvalidTask) as exc:
            await self._abort_for(exc, context)
            raise
        return scheduler_pb2.CancelTaskResponse(task=task)

    async def WatchTask(
        self, request: scheduler_pb2.WatchTaskRequest, context: Context
    ) -> AsyncIterator[scheduler_pb2.WatchTaskResponse]:
        try:
            events = self._scheduler.watch(_require_task_id(request.task_id), request.after_sequence)
            async for event in events:
                yield scheduler_pb2.WatchTaskResponse(event=event)
        except (TaskNotFound, InvalidTask) as exc:
            await self._abort_for(exc, context)

    async def RegisterExecutor(
        self, request: scheduler_pb2.RegisterExecutorRequest, context: Context
    ) -> scheduler_pb2.RegisterExecutorResponse:
        try:
            stale = await self._scheduler.register_executor(
                request.executor_id, request.address, request.capacity, request.driver, list(request.sandbox_ids)
            )
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return scheduler_pb2.RegisterExecutorResponse(
            heartbeat_interval_seconds=self._heartbeat_interval, stale_sandbox_ids=stale
        )

    async def Heartbeat(
        self, request: scheduler_pb2.HeartbeatRequest, context: Context
    ) -> scheduler_pb2.HeartbeatResponse:
        return scheduler_pb2.HeartbeatResponse(known=self._scheduler.heartbeat(request.executor_id))

    async def ListExecutors(
        self, request: scheduler_pb2.ListExecutorsRequest, context: Context
    ) -> scheduler_pb2.ListExecutorsResponse:
        return scheduler_pb2.ListExecutorsResponse(
            executors=[e.info() for e in self._scheduler.executors.all()]
        )
