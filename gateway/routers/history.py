"""A task's recorded history and search across tasks (the memory service).

The memory service knows tasks, not tenants: a task's history is read once the scheduler has
said the caller owns the task, and a tenant's search keeps only hits in its own tasks (an
admin's, and the keyless local mode's, keeps all).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from corral.bounds import INT64_MAX, MAX_SEARCH_QUERY_CHARS
from corral.internal.v1 import registry_pb2, registry_pb2_grpc
from corral.schema import TERMINAL_TASK_STATES
from corral.v1 import memory_pb2, task_pb2
from corral.views import HistoryEventView, HistoryResponse, SearchHitView, SearchResponse
from gateway.auth import CallerDep, Metadata, identity
from gateway.backends import Backends, upstream
from gateway.deps import BackendsDep
from gateway.errors import ApiError
from gateway.routers.tasks import get_task
from gateway.views import UPSTREAM, errors, view_response

router = APIRouter(tags=["history"])

# The most hits the memory service returns for one search.
MAX_SEARCH_HITS = 500


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
    caller: CallerDep,
    after: Annotated[int, Query(ge=0, le=INT64_MAX, description="Only events after this sequence.")] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> JSONResponse:
    task = await get_task(backends, task_id, caller)
    async with upstream("memory"):
        reply = await backends.memory.ListEvents(
            memory_pb2.ListEventsRequest(task_id=task_id, after_sequence=after, limit=limit),
            timeout=backends.timeout,
        )
    events = [HistoryEventView.from_proto(e) for e in reply.events]
    next_after = events[-1].sequence if events else after
    delivering = not reply.finished and await still_delivering(backends, task)
    return view_response(
        HistoryResponse(
            task_id=task_id, events=events, next_after=next_after, complete=reply.finished, delivering=delivering
        )
    )


async def still_delivering(backends: Backends, task: task_pb2.Task) -> bool:
    """Whether the ended `task`'s executor still holds history it has not delivered (the memory
    service was down). Not per task: an executor delivering others' history counts, which only
    makes a client ask once more."""
    if task.state not in TERMINAL_TASK_STATES or not task.executor_id:
        return False
    async with upstream("scheduler"):
        reply = await registry_pb2_grpc.ExecutorRegistryServiceStub(backends.scheduler_channel).ListExecutors(
            registry_pb2.ListExecutorsRequest(include_network_counters=True), timeout=backends.timeout
        )
    return any(
        e.executor_id == task.executor_id and e.alive and e.history_undelivered_bytes > 0 for e in reply.executors
    )


@router.get(
    "/v1/search",
    name="search",
    summary="Search commands and outputs across tasks (newest first)",
    response_model=SearchResponse,
    responses=errors(400, 404, *UPSTREAM, e404="Unknown task (task_id)."),
)
async def search(
    backends: BackendsDep,
    caller: CallerDep,
    q: Annotated[
        str, Query(min_length=1, max_length=MAX_SEARCH_QUERY_CHARS, description="Case-insensitive substring.")
    ],
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    task_id: Annotated[str, Query(description="Only this task's history.")] = "",
) -> JSONResponse:
    who = await identity(backends, caller)
    if task_id and not who.admin:
        await get_task(backends, task_id, caller)  # 404 for another tenant's task (or an unknown one)
    # A tenant's search asks for the most the memory service gives and keeps its own tasks' hits.
    wanted = limit if who.admin or task_id else MAX_SEARCH_HITS
    async with upstream("memory"):
        reply = await backends.memory.Search(
            memory_pb2.SearchRequest(query=q, limit=wanted, task_id=task_id), timeout=backends.timeout
        )
    found = list(reply.hits)
    if not who.admin and not task_id:
        owned = await owned_tasks(backends, caller, {hit.event.task_id for hit in found})
        found = [hit for hit in found if hit.event.task_id in owned][:limit]
    hits = [
        SearchHitView(
            task_id=hit.event.task_id,
            sequence=hit.event.sequence,
            snippet=hit.snippet,
            event=HistoryEventView.from_proto(hit.event),
        )
        for hit in found
    ]
    return view_response(SearchResponse(query=q, hits=hits))


async def owned_tasks(backends: Backends, caller: Metadata, task_ids: set[str]) -> set[str]:
    """Those of `task_ids` the caller's tenant owns (the scheduler answers 404 for the rest)."""

    async def owns(task_id: str) -> bool:
        try:
            await get_task(backends, task_id, caller)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    ids = sorted(task_ids)
    results = await asyncio.gather(*(owns(task_id) for task_id in ids))
    return {task_id for task_id, owned in zip(ids, results, strict=True) if owned}
