"""A task's recorded history and search across tasks (the memory service)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from corral.v1 import memory_pb2
from corral.views import HistoryEventView, HistoryResponse, SearchHitView, SearchResponse
from gateway.backends import upstream
from gateway.deps import BackendsDep
from gateway.routers.tasks import get_task
from gateway.views import UPSTREAM, errors, view_response

router = APIRouter(tags=["history"])


@router.get(
    "/v1/tasks/{task_id}/history",
    name="task_history",
    summary="A task's recorded history (from the memory service)",
    response_model=HistoryResponse,
    responses=errors(400, 404, *UPSTREAM),
)
async def task_history(
    task_id: str,
    backends: BackendsDep,
    after: Annotated[int, Query(ge=0, description="Only events after this sequence.")] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> JSONResponse:
    await get_task(backends, task_id)
    async with upstream("memory"):
        reply = await backends.memory.ListEvents(
            memory_pb2.ListEventsRequest(task_id=task_id, after_sequence=after, limit=limit),
            timeout=backends.timeout,
        )
    events = [HistoryEventView.from_proto(e) for e in reply.events]
    next_after = events[-1].sequence if events else after
    return view_response(HistoryResponse(task_id=task_id, events=events, next_after=next_after))


@router.get(
    "/v1/search",
    name="search",
    summary="Search commands and outputs across tasks (newest first)",
    response_model=SearchResponse,
    responses=errors(400, *UPSTREAM),
)
async def search(
    backends: BackendsDep,
    q: Annotated[str, Query(min_length=1, description="Case-insensitive substring.")],
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    task_id: Annotated[str, Query(description="Only this task's history.")] = "",
) -> JSONResponse:
    async with upstream("memory"):
        reply = await backends.memory.Search(
            memory_pb2.SearchRequest(query=q, limit=limit, task_id=task_id), timeout=backends.timeout
        )
    hits = [
        SearchHitView(
            task_id=hit.event.task_id,
            sequence=hit.event.sequence,
            snippet=hit.snippet,
            event=HistoryEventView.from_proto(hit.event),
        )
        for hit in reply.hits
    ]
    return view_response(SearchResponse(query=q, hits=hits))
