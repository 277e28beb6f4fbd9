"""A task's events as Server-Sent Events, relayed live from the scheduler's WatchTask.

Each client gets the stream at its own pace: a few events are held for it (QUEUED_EVENTS), and
past them the relay stops reading from the scheduler, whose WatchTask then waits on gRPC flow
control and reads on from its stored events when the client catches up. So a slow reader
costs a bounded amount of memory, however large the task's output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import grpc
import structlog

from corral.schema import event_to_json
from corral.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2
from gateway.errors import error_body, from_rpc_error

log = structlog.get_logger()

# Sentinel the pump puts on the queue when the gRPC stream ends.
_END = object()
# How many times a watch that ends early (without `finished`) is resumed.
MAX_WATCHES = 3
# Events held per client between the scheduler and the client (an output event is <= 1 MiB).
QUEUED_EVENTS = 4


def format_event(event: task_pb2.TaskEvent) -> str:
    kind = event.WhichOneof("event") or "unknown"
    data = json.dumps(event_to_json(event), separators=(",", ":"))
    return f"id: {event.sequence}\nevent: {kind}\ndata: {data}\n\n"


def format_error(body: dict[str, Any]) -> str:
    return f"event: error\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"


class Watch(NamedTuple):
    """A WatchTask call already answering, with its first event (None: it ended at once)."""

    call: Any
    first: task_pb2.TaskEvent | None


async def open_watch(
    scheduler: scheduler_pb2_grpc.SchedulerServiceAsyncStub,
    task_id: str,
    after_sequence: int,
    caller: tuple[tuple[str, str], ...],
    wait: float,
) -> Watch | None:
    """Starts following the task: the call and its first answer, if one comes within `wait`
    seconds (None otherwise: a quiet task, the call cancelled). The scheduler checks the task
    and the caller before its first answer, so an unknown task raises (the AioRpcError) here,
    before any response has started; this spares the GetTask call that would check it first."""
    call = scheduler.WatchTask(
        scheduler_pb2.WatchTaskRequest(task_id=task_id, after_sequence=after_sequence), metadata=caller
    )
    try:
        response = await asyncio.wait_for(call.read(), timeout=wait)
    except TimeoutError:
        call.cancel()
        return None
    except BaseException:
        call.cancel()
        raise
    return Watch(call, event_of(response))


def event_of(response: object) -> task_pb2.TaskEvent | None:
    """A watch's answer as its event; None for the end of the watch (grpc.aio.EOF)."""
    return response.event if isinstance(response, scheduler_pb2.WatchTaskResponse) else None


async def next_event(call: Any) -> task_pb2.TaskEvent | None:
    """The watch's next event; None once it has ended."""
    return event_of(await call.read())


async def task_event_stream(
    scheduler: scheduler_pb2_grpc.SchedulerServiceAsyncStub,
    task_id: str,
    after_sequence: int,
    keepalive_seconds: float,
    caller: tuple[tuple[str, str], ...] = (),
    opened: Watch | None = None,
) -> AsyncIterator[str]:
    """Yields SSE frames until the task's `finished` event (or the watch ends), going on with
    the `opened` watch when there is one.

    A separate pump task reads the gRPC stream into a queue, so waiting for the next event
    can time out (to send a keep-alive comment) without cancelling the gRPC read.
    """
    queue: asyncio.Queue[object] = asyncio.Queue(QUEUED_EVENTS)
    calls: list[Any] = [] if opened is None else [opened.call]

    async def pump() -> None:
        last = after_sequence
        try:
            for watch in range(MAX_WATCHES):
                if watch == 0 and opened is not None:
                    call, event = opened.call, opened.first
                else:
                    call = scheduler.WatchTask(
                        scheduler_pb2.WatchTaskRequest(task_id=task_id, after_sequence=last), metadata=caller
                    )
                    calls.append(call)
                    event = await next_event(call)
                if event is None:
                    return
                while event is not None:
                    last = event.sequence
                    await queue.put(event)
                    if event.WhichOneof("event") == "finished":
                        return
                    event = await next_event(call)
                # The watch ended before `finished` (the task turned terminal while its last
                # events were being written): follow again from where it stopped.
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                await queue.put(exc)
        finally:
            current = asyncio.current_task()
            if current is None or not current.cancelling():  # cancelled: no one reads any more
                await queue.put(_END)

    pumping = asyncio.create_task(pump())
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), timeout=keepalive_seconds)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if item is _END:
                return
            if isinstance(item, grpc.aio.AioRpcError):
                error = from_rpc_error(item, "scheduler")
                yield format_error(error_body(error.code, error.message))
                return
            assert isinstance(item, task_pb2.TaskEvent)
            yield format_event(item)
            if item.WhichOneof("event") == "finished":
                return
    finally:
        # The client went away or the task ended: stop following it upstream too.
        for call in calls:
            call.cancel()
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pumping
