"""The seed contract (DESIGN.md §1): POST /schedule -> {"task_id"}, GET /status?task_id=."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from corral.views import ScheduleResponse, TaskView
from gateway.auth import CallerDep
from gateway.deps import BackendsDep
from gateway.idempotency import REPLAYED, IdempotencyKeyDep
from gateway.routers.tasks import SUBMIT_ERRORS, TASK_BODY, TaskBody, get_task, submit
from gateway.views import UPSTREAM, errors, view_response

router = APIRouter(tags=["seed"])


@router.post(
    "/schedule",
    name="schedule",
    summary="Schedule a task",
    response_model=ScheduleResponse,
    responses=SUBMIT_ERRORS,
    openapi_extra=TASK_BODY.openapi,
)
async def schedule(
    task: TaskBody, backends: BackendsDep, caller: CallerDep, idempotency_key: IdempotencyKeyDep
) -> JSONResponse:
    created, replayed = await submit(backends, task, caller, idempotency_key)
    return view_response(ScheduleResponse(task_id=created.task_id), headers=REPLAYED if replayed else None)


@router.get(
    "/status",
    name="status",
    summary="A task's status, per-step results and log path",
    response_model=TaskView,
    responses=errors(400, 404, *UPSTREAM, e400="task_id is missing or empty."),
)
async def status(
    backends: BackendsDep, caller: CallerDep, task_id: Annotated[str, Query(description="From POST /schedule.")]
) -> JSONResponse:
    return view_response(TaskView.from_proto(await get_task(backends, task_id, caller)))
