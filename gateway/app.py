"""The REST gateway: the seed's /schedule and /status, the /v1 API, SSE events, health.

Handlers stay thin: parse and validate, make one or two gRPC calls, shape the JSON.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic.json_schema import models_json_schema

from corral.config import Settings
from corral.schema import TASK_STATES_BY_NAME, TaskRequest, task_to_json
from corral.v1 import memory_pb2, scheduler_pb2, task_pb2
from gateway.backends import Backends, upstream
from gateway.body import read_task_request
from gateway.errors import ApiError, error_body, install_error_handlers
from gateway.sandboxes import install_sandbox_routes
from gateway.sse import task_event_stream
from gateway.views import (
    ERROR_RESPONSES,
    HealthResponse,
    HistoryResponse,
    ScheduleResponse,
    SearchResponse,
    TaskList,
    TaskView,
    history_event_to_json,
)

TASK_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TaskRequest"}}},
    }
}
LISTABLE_STATES = [name for name in TASK_STATES_BY_NAME if name != "unspecified"]


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # grpc.aio channels belong to the running event loop, so they are made here.
        app.state.backends = Backends.connect(settings)
        try:
            yield
        finally:
            await app.state.backends.close()

    app = FastAPI(
        title="Corral",
        version="1",
        description="Schedule agents' tasks into isolated sandboxes and follow them.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    _install_openapi(app)
    limit = settings.max_request_bytes

    def backends(request: Request) -> Backends:
        value: Backends = request.app.state.backends
        return value

    async def submit(request: Request) -> task_pb2.Task:
        task_request = await read_task_request(request, limit)
        b = backends(request)
        async with upstream("scheduler"):
            reply = await b.scheduler.SubmitTask(
                scheduler_pb2.SubmitTaskRequest(spec=task_request.to_proto()), timeout=b.timeout
            )
        return reply.task if reply.HasField("task") else task_pb2.Task(task_id=reply.task_id)

    async def get_task(request: Request, task_id: str) -> task_pb2.Task:
        if not task_id.strip():
            raise ApiError(400, "invalid_argument", "task_id must not be empty")
        b = backends(request)
        async with upstream("scheduler"):
            reply = await b.scheduler.GetTask(
                scheduler_pb2.GetTaskRequest(task_id=task_id), timeout=b.timeout
            )
        return reply.task

    # --- the seed contract (DESIGN.md §1) -------------------------------------------------

    @app.post(
        "/schedule",
        tags=["seed"],
        summary="Schedule a task",
        response_model=ScheduleResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=TASK_BODY,
    )
    async def schedule(request: Request) -> JSONResponse:
        task = await submit(request)
        return JSONResponse({"task_id": task.task_id})

    @app.get(
        "/status",
        tags=["seed"],
        summary="A task's status, per-step results and log path",
        response_model=TaskView,
        responses=ERROR_RESPONSES,
    )
    async def status(
        request: Request, task_id: Annotated[str, Query(description="From POST /schedule.")]
    ) -> JSONResponse:
        return JSONResponse(task_to_json(await get_task(request, task_id)))

    # --- /v1 ------------------------------------------------------------------------------

    @app.post(
        "/v1/tasks",
        tags=["tasks"],
        summary="Create a task",
        status_code=201,
        response_model=TaskView,
        responses=ERROR_RESPONSES,
        openapi_extra=TASK_BODY,
    )
    async def create_task(request: Request) -> JSONResponse:
        task = await submit(request)
        return JSONResponse(
            task_to_json(task), status_code=201, headers={"Location": f"/v1/tasks/{task.task_id}"}
        )

    @app.get(
        "/v1/tasks",
        tags=["tasks"],
        summary="List tasks",
        response_model=TaskList,
        responses=ERROR_RESPONSES,
    )
    async def list_tasks(
        request: Request,
        state: Annotated[str | None, Query(description=" | ".join(LISTABLE_STATES))] = None,
        page_size: Annotated[int, Query(ge=1, le=500)] = 50,
        page_token: str = "",
    ) -> JSONResponse:
        wanted = task_pb2.TASK_STATE_UNSPECIFIED
        if state:
            if state not in LISTABLE_STATES:
                raise ApiError(
                    400,
                    "invalid_argument",
                    f"state: unknown state {state!r} (expected one of {', '.join(LISTABLE_STATES)})",
                )
            wanted = TASK_STATES_BY_NAME[state]
        b = backends(request)
        async with upstream("scheduler"):
            reply = await b.scheduler.ListTasks(
                scheduler_pb2.ListTasksRequest(state=wanted, page_size=page_size, page_token=page_token),
                timeout=b.timeout,
            )
        return JSONResponse(
            {
                "tasks": [task_to_json(t) for t in reply.tasks],
                "next_page_token": reply.next_page_token or None,
            }
        )

    @app.get(
        "/v1/tasks/{task_id}",
        tags=["tasks"],
        summary="Get a task",
        response_model=TaskView,
        responses=ERROR_RESPONSES,
    )
    async def read_task(request: Request, task_id: str) -> JSONResponse:
        return JSONResponse(task_to_json(await get_task(request, task_id)))

    async def cancel(request: Request, task_id: str) -> JSONResponse:
        b = backends(request)
        async with upstream("scheduler"):
            reply = await b.scheduler.CancelTask(
                scheduler_pb2.CancelTaskRequest(task_id=task_id), timeout=b.timeout
            )
        return JSONResponse(task_to_json(reply.task))

    app.add_api_route(
        "/v1/tasks/{task_id}/cancel",
        cancel,
        methods=["POST"],
        tags=["tasks"],
        summary="Cancel a task (stops its current step at once)",
        response_model=TaskView,
        responses={**ERROR_RESPONSES, 409: {"description": "The task has already ended."}},
    )
    app.add_api_route(
        "/v1/tasks/{task_id}",
        cancel,
        methods=["DELETE"],
        tags=["tasks"],
        summary="Cancel a task (same as POST .../cancel)",
        response_model=TaskView,
        responses={**ERROR_RESPONSES, 409: {"description": "The task has already ended."}},
    )

    @app.get(
        "/v1/tasks/{task_id}/events",
        tags=["tasks"],
        summary="Follow a task's events live (Server-Sent Events)",
        response_class=StreamingResponse,
        responses={
            **ERROR_RESPONSES,
            200: {
                "content": {"text/event-stream": {}},
                "description": "Frames `id: <sequence>`, `event: <type>`, `data: <JSON>`; "
                "the stream ends after the `finished` event.",
            },
        },
    )
    async def task_events(
        request: Request,
        task_id: str,
        after: Annotated[int, Query(ge=0, description="Only events after this sequence.")] = 0,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        await get_task(request, task_id)  # 404 before the stream starts, not inside it
        if last_event_id:
            try:
                after = max(after, int(last_event_id))
            except ValueError:
                raise ApiError(
                    400, "invalid_argument", "Last-Event-ID must be an event sequence number"
                ) from None
        stream = task_event_stream(
            backends(request).scheduler, task_id, after, settings.gateway_sse_keepalive_seconds
        )
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get(
        "/v1/tasks/{task_id}/history",
        tags=["history"],
        summary="A task's recorded history (from the memory service)",
        response_model=HistoryResponse,
        responses=ERROR_RESPONSES,
    )
    async def task_history(
        request: Request,
        task_id: str,
        after: Annotated[int, Query(ge=0, description="Only events after this sequence.")] = 0,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> JSONResponse:
        await get_task(request, task_id)
        b = backends(request)
        async with upstream("memory"):
            reply = await b.memory.ListEvents(
                memory_pb2.ListEventsRequest(task_id=task_id, after_sequence=after, limit=limit),
                timeout=b.timeout,
            )
        events = [history_event_to_json(e) for e in reply.events]
        next_after = events[-1]["sequence"] if events else after
        return JSONResponse({"task_id": task_id, "events": events, "next_after": next_after})

    @app.get(
        "/v1/search",
        tags=["history"],
        summary="Search commands and outputs across tasks (newest first)",
        response_model=SearchResponse,
        responses=ERROR_RESPONSES,
    )
    async def search(
        request: Request,
        q: Annotated[str, Query(min_length=1, description="Case-insensitive substring.")],
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        task_id: Annotated[str, Query(description="Only this task's history.")] = "",
    ) -> JSONResponse:
        b = backends(request)
        async with upstream("memory"):
            reply = await b.memory.Search(
                memory_pb2.SearchRequest(query=q, limit=limit, task_id=task_id), timeout=b.timeout
            )
        hits = [
            {
                "task_id": hit.event.task_id,
                "sequence": hit.event.sequence,
                "snippet": hit.snippet,
                "event": history_event_to_json(hit.event),
            }
            for hit in reply.hits
        ]
        return JSONResponse({"query": q, "hits": hits})

    @app.get(
        "/healthz",
        tags=["health"],
        summary="Whether the scheduler and memory services answer",
        response_model=HealthResponse,
        responses={503: {"description": "A service is down (named in the message)."}},
    )
    async def healthz(request: Request) -> JSONResponse:
        services = await backends(request).health()
        down = [f"{name} ({state})" for name, state in services.items() if state != "serving"]
        if not down:
            return JSONResponse({"status": "ok", "services": services})
        body = {
            "status": "unavailable",
            "services": services,
            **error_body("unavailable", "not serving: " + ", ".join(down)),
        }
        return JSONResponse(body, status_code=503)

    install_sandbox_routes(app, settings)
    return app


def _install_openapi(app: FastAPI) -> None:
    """Adds TaskRequest (and its step models) to the schema: handlers parse bodies themselves."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            _, definitions = models_json_schema(
                [(TaskRequest, "validation")], ref_template="#/components/schemas/{model}"
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(definitions.get("$defs", {}))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
