"""/v1/tasks: create, list, get, cancel, and follow a task's events live (SSE)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from corral.bounds import INT64_MAX
from corral.schema import TaskRequest
from corral.steps import MAX_STEPS
from corral.v1 import scheduler_pb2, task_pb2
from corral.views import LISTABLE_TASK_STATES, TASK_STATES_BY_NAME, OutputStreamName, TaskList, TaskView
from gateway.auth import CallerDep, Metadata
from gateway.backends import Backends, upstream
from gateway.body import JsonBody
from gateway.deps import BackendsDep, SettingsDep
from gateway.errors import ApiError
from gateway.idempotency import REPLAYED, IdempotencyKeyDep
from gateway.sse import open_watch, task_event_stream
from gateway.step_output import STREAMS, step_output
from gateway.views import SSE_STREAM, UPSTREAM, errors, view_response

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])
SSE_TYPE = "text/event-stream"

TASK_BODY = JsonBody(TaskRequest, expected=' with "steps"', example={"steps": [
    {"tool": "shell", "command": "echo hello > hello.txt"},
    {"tool": "python", "code": "print(open('hello.txt').read())"},
]})
TaskBody = Annotated[TaskRequest, Depends(TASK_BODY)]
# Submitting: bad task 400, sandbox_id unknown 404 or ended 409, too large 413, quota 429.
SUBMIT_ERRORS = errors(400, 404, 409, 413, 429, *UPSTREAM, e404="Unknown sandbox (sandbox_id).",
                       e409="The sandbox named by sandbox_id has ended, or the Idempotency-Key was "
                       "used for a different request.",
                       e429="The tenant's submission quota is used up (Retry-After says when to retry).")
TASK_ERRORS = errors(400, 404, *UPSTREAM, e400="task_id is blank.")
# How long an event stream's request waits for the task's first event before checking the task
# with a GetTask instead (so that its 404 still comes before the stream starts).
FIRST_EVENT_WAIT_SECONDS = 1.0


async def submit(
    backends: Backends, task: TaskRequest, caller: Metadata, idempotency_key: str = ""
) -> tuple[task_pb2.Task, bool]:
    """The task created (or, replayed True, the one an earlier request with the key created)."""
    async with upstream("scheduler"):
        reply = await backends.scheduler.SubmitTask(
            scheduler_pb2.SubmitTaskRequest(spec=task.to_proto(), idempotency_key=idempotency_key),
            metadata=caller,
            timeout=backends.timeout,
        )
    return (reply.task if reply.HasField("task") else task_pb2.Task(task_id=reply.task_id)), reply.replayed


def require_task_id(task_id: str) -> None:
    if not task_id.strip():
        raise ApiError(400, "invalid_argument", "task_id must not be empty")


async def get_task(backends: Backends, task_id: str, caller: Metadata) -> task_pb2.Task:
    """The task, if the caller's tenant owns it (404 otherwise, as for an unknown id)."""
    require_task_id(task_id)
    async with upstream("scheduler"):
        reply = await backends.scheduler.GetTask(
            scheduler_pb2.GetTaskRequest(task_id=task_id), metadata=caller, timeout=backends.timeout
        )
    return reply.task


@router.post(
    "",
    name="create_task",
    summary="Create a task (and, asked for text/event-stream, follow its events in the same request)",
    status_code=201,
    response_model=TaskView,
    responses={
        **SUBMIT_ERRORS,
        201: {"description": "The task created; with `Accept: text/event-stream` (and not application/json) "
              "its events instead, as GET /v1/tasks/{task_id}/events sends them (Location names the task).",
              **SSE_STREAM},
        200: {"model": TaskView, "description": "A replay (Idempotency-Key seen before)."},
    },
    openapi_extra=TASK_BODY.openapi,
)
async def create_task(
    request: Request,
    task: TaskBody,
    backends: BackendsDep,
    settings: SettingsDep,
    caller: CallerDep,
    idempotency_key: IdempotencyKeyDep,
) -> Response:
    created, replayed = await submit(backends, task, caller, idempotency_key)
    headers = {"Location": f"/v1/tasks/{created.task_id}", **(REPLAYED if replayed else {})}
    status = 200 if replayed else 201
    if wants_events(request):
        # Submit and follow in one request (one round trip less than POST, then GET .../events).
        # The task exists from here on: a failure to follow it is told inside the stream.
        events = task_event_stream(backends.scheduler, created.task_id, 0, settings.gateway_sse_keepalive_seconds, caller)
        return sse_response(events, status, headers)
    return view_response(TaskView.from_proto(created), status_code=status, headers=headers)


@router.get("", name="list_tasks", summary="List tasks", response_model=TaskList, responses=errors(400, *UPSTREAM))
async def list_tasks(
    backends: BackendsDep,
    caller: CallerDep,
    state: Annotated[
        str | None,
        Query(description="Only tasks in this state.", json_schema_extra={"enum": list(LISTABLE_TASK_STATES)}),
    ] = None,
    page_size: Annotated[int, Query(ge=1, le=500)] = 50,
    page_token: Annotated[str, Query(description="next_page_token of the previous page.")] = "",
) -> JSONResponse:
    wanted = task_pb2.TASK_STATE_UNSPECIFIED
    if state:
        if state not in LISTABLE_TASK_STATES:
            raise ApiError(
                400,
                "invalid_argument",
                f"state: unknown state {state!r} (expected one of {', '.join(LISTABLE_TASK_STATES)})",
            )
        wanted = TASK_STATES_BY_NAME[state]
    async with upstream("scheduler"):
        reply = await backends.scheduler.ListTasks(
            scheduler_pb2.ListTasksRequest(state=wanted, page_size=page_size, page_token=page_token),
            metadata=caller,
            timeout=backends.timeout,
        )
    listing = TaskList(tasks=[TaskView.from_proto(t) for t in reply.tasks], next_page_token=reply.next_page_token or None)
    return view_response(listing)


@router.get("/{task_id}", name="get_task", summary="Get a task", response_model=TaskView, responses=TASK_ERRORS)
async def read_task(task_id: str, backends: BackendsDep, caller: CallerDep) -> JSONResponse:
    return view_response(TaskView.from_proto(await get_task(backends, task_id, caller)))


async def cancel(task_id: str, backends: BackendsDep, caller: CallerDep) -> JSONResponse:
    async with upstream("scheduler"):
        reply = await backends.scheduler.CancelTask(
            scheduler_pb2.CancelTaskRequest(task_id=task_id), metadata=caller, timeout=backends.timeout
        )
    return view_response(TaskView.from_proto(reply.task))


CANCEL_ERRORS = errors(404, 409, *UPSTREAM, e409="The task has already ended.")
router.add_api_route(
    "/{task_id}/cancel",
    cancel,
    methods=["POST"],
    name="cancel_task",
    summary="Cancel a task (stops its current step at once)",
    response_model=TaskView,
    responses=CANCEL_ERRORS,
)
router.add_api_route(
    "/{task_id}",
    cancel,
    methods=["DELETE"],
    name="delete_task",
    summary="Cancel a task (same as POST .../cancel)",
    response_model=TaskView,
    responses=CANCEL_ERRORS,
)

EVENTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    **errors(400, 404, *UPSTREAM, e400="Last-Event-ID or after is not a sequence number, or task_id is blank."),
    200: {
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": "Frames `id: <sequence>`, `event: <type>`, `data: <JSON>`, where the data is a "
        "TaskEvent (#/components/schemas/TaskEvent) and the event its `type`; the stream ends "
        "after the `finished` event. Idle streams get `: keep-alive` comments.",
    },
}


def wants_events(request: Request) -> bool:
    """Whether a creating request asks to follow the task (Accept names the stream, not JSON)."""
    accept = request.headers.get("accept", "")
    return SSE_TYPE in accept and "application/json" not in accept


def sse_response(
    stream: AsyncIterator[str], status_code: int = 200, headers: Mapping[str, str] | None = None
) -> StreamingResponse:
    return StreamingResponse(
        stream,
        status_code=status_code,
        media_type=SSE_TYPE,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )


def event_sequence(last_event_id: str) -> int:
    """The Last-Event-ID header as a sequence number (what the stream's `id:` lines carry)."""
    text = last_event_id.strip()
    if not text.isascii() or not text.isdigit() or int(text) > INT64_MAX:
        raise ApiError(
            400, "invalid_argument", f"Last-Event-ID must be an event sequence number (0 to {INT64_MAX})"
        )
    return int(text)


@router.get(
    "/{task_id}/events",
    name="task_events",
    summary="Follow a task's events live (Server-Sent Events)",
    response_class=StreamingResponse,
    responses=EVENTS_RESPONSES,
)
async def task_events(
    task_id: str,
    backends: BackendsDep,
    settings: SettingsDep,
    caller: CallerDep,
    after: Annotated[int, Query(ge=0, le=INT64_MAX, description="Only events after this sequence.")] = 0,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    # Every check before the stream starts: an error inside it would break the response.
    if last_event_id:
        after = max(after, event_sequence(last_event_id))
    require_task_id(task_id)
    # 401/404 before the stream starts, not inside it: from the watch's first answer, or (when
    # none comes at once: a quiet task followed from its last event) from a GetTask.
    async with upstream("scheduler"):
        opened = await open_watch(backends.scheduler, task_id, after, caller, FIRST_EVENT_WAIT_SECONDS)
    if opened is None:
        await get_task(backends, task_id, caller)
    stream = task_event_stream(
        backends.scheduler, task_id, after, settings.gateway_sse_keepalive_seconds, caller, opened
    )
    return sse_response(stream)


@router.get(
    "/{task_id}/steps/{index}/output",
    name="step_output",
    summary="A step's whole stdout or stderr, as raw bytes",
    description="The step's output as kept under its limit (results carry a preview of at most "
    "output_preview_bytes: see stdout_clipped), streamed from the task's stored events; for a "
    "running step, it follows until the step ends.",
    response_class=StreamingResponse,
    responses={
        **errors(400, 404, *UPSTREAM, e404="Unknown task, or the task has no such step."),
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "The output (UTF-8)."},
    },
)
async def read_step_output(
    task_id: str,
    index: Annotated[int, Path(ge=0, le=MAX_STEPS, description="The step's index (from 0).")],
    backends: BackendsDep,
    caller: CallerDep,
    stream: Annotated[OutputStreamName, Query(description="Which output.")] = "stdout",
) -> StreamingResponse:
    task = await get_task(backends, task_id, caller)  # 401/404 before the stream starts
    if index >= len(task.steps):
        raise ApiError(404, "not_found", f"index: task {task_id} has no step {index} (it has {len(task.steps)})")
    assert stream in STREAMS
    return StreamingResponse(
        step_output(backends.scheduler, task_id, index, stream, caller),
        media_type="text/plain; charset=utf-8",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
