"""SchedulerService over gRPC: translates requests to Scheduler calls.

Errors are `corral.errors` classes raised by the Scheduler (or here, for malformed requests);
corral.grpc_server's interceptor turns them into status codes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from corral.audit import AuditLog
from corral.errors import InvalidArgument, InvalidTask
from corral.grpc_server import Context
from corral.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2

from .core import Scheduler
from .principal import Authenticator
from .redaction import public_task

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def _require_task_id(task_id: str) -> str:
    if not task_id:
        raise InvalidTask("task_id is required")
    return task_id


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    """Each call acts for its caller's tenant (services/scheduler/principal.py)."""

    def __init__(self, scheduler: Scheduler, auth: Authenticator, audit: AuditLog) -> None:
        self._scheduler = scheduler
        self._auth = auth
        self._audit = audit

    async def SubmitTask(
        self, request: scheduler_pb2.SubmitTaskRequest, context: Context
    ) -> scheduler_pb2.SubmitTaskResponse:
        who = await self._auth.caller(context, "SubmitTask")
        task, replayed = await self._scheduler.submit_once(request.spec, who, request.idempotency_key)
        if not replayed:
            self._audit.record("task_submitted", who, task_id=task.task_id, sandbox_id=request.spec.sandbox_id)
        return scheduler_pb2.SubmitTaskResponse(task_id=task.task_id, task=public_task(task), replayed=replayed)

    async def GetTask(
        self, request: scheduler_pb2.GetTaskRequest, context: Context
    ) -> scheduler_pb2.GetTaskResponse:
        who = await self._auth.caller(context, "GetTask")
        task = await self._scheduler.get(_require_task_id(request.task_id), who)
        return scheduler_pb2.GetTaskResponse(task=public_task(task))

    async def ListTasks(
        self, request: scheduler_pb2.ListTasksRequest, context: Context
    ) -> scheduler_pb2.ListTasksResponse:
        who = await self._auth.caller(context, "ListTasks")
        if request.page_size < 0 or request.page_size > MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be between 0 and {MAX_PAGE_SIZE}")
        if request.state not in task_pb2.TaskState.values():
            raise InvalidArgument(f"unknown state {request.state}")
        tasks, token = await self._scheduler.list_tasks(
            request.state, request.page_size or DEFAULT_PAGE_SIZE, request.page_token, who
        )
        return scheduler_pb2.ListTasksResponse(tasks=[public_task(t) for t in tasks], next_page_token=token)

    async def CancelTask(
        self, request: scheduler_pb2.CancelTaskRequest, context: Context
    ) -> scheduler_pb2.CancelTaskResponse:
        who = await self._auth.caller(context, "CancelTask")
        task = await self._scheduler.cancel(_require_task_id(request.task_id), who)
        self._audit.record("task_cancelled", who, task_id=task.task_id)
        return scheduler_pb2.CancelTaskResponse(task=public_task(task))

    async def WatchTask(
        self, request: scheduler_pb2.WatchTaskRequest, context: Context
    ) -> AsyncIterator[scheduler_pb2.WatchTaskResponse]:
        who = await self._auth.caller(context, "WatchTask")
        events = self._scheduler.watch(_require_task_id(request.task_id), request.after_sequence, who)
        async for event in events:
            yield scheduler_pb2.WatchTaskResponse(event=event)
