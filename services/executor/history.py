"""Records each task's history in the memory service, in the background.

Steps must not wait on the memory service, and its absence must not fail tasks: entries go
into a bounded queue drained by one worker (one worker keeps each task's entries in order);
when the queue is full or a call fails, the entries are dropped and the loss is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from corral.config import Settings
from corral.grpc_server import channel
from corral.v1 import memory_pb2, memory_pb2_grpc

log = structlog.get_logger()

QUEUE_SIZE = 10_000
CALL_TIMEOUT_SECONDS = 3.0
# How long entries recorded with `batch` wait for others to travel with (a sandbox's calls come
# many a second: one AppendEvents each would cost every call more than its own work).
BATCH_SECONDS = 0.2


def history_event(
    task_id: str,
    kind: memory_pb2.HistoryKind.ValueType,
    *,
    step_index: int = -1,
    tool: str = "",
    action: str = "",
    state: str = "",
    exit_code: int | None = None,
    stdout: str = "",
    stderr: str = "",
    error: str = "",
) -> memory_pb2.HistoryEvent:
    event = memory_pb2.HistoryEvent(
        task_id=task_id,
        kind=kind,
        step_index=step_index,
        tool=tool,
        action=action,
        state=state,
        stdout=stdout,
        stderr=stderr,
        error=error,
    )
    if exit_code is not None:
        event.exit_code = exit_code
    now = Timestamp()
    now.GetCurrentTime()
    event.time.CopyFrom(now)
    return event


class HistoryRecorder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._queue: asyncio.Queue[memory_pb2.HistoryEvent] = asyncio.Queue(QUEUE_SIZE)
        self._channel: grpc.aio.Channel | None = None
        self._worker: asyncio.Task[None] | None = None
        self._failing = False
        self._batching = False

    def record(self, event: memory_pb2.HistoryEvent, batch: bool = False) -> None:
        """Queues `event`; with `batch`, the next send waits BATCH_SECONDS for more."""
        self._batching = self._batching or batch
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            log.warning("history queue full; dropping an entry", task_id=event.task_id)

    async def close(self, flush_seconds: float = 2.0) -> None:
        """Sends what is queued (for at most `flush_seconds`), then stops."""
        if self._worker is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), flush_seconds)
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None

    async def _drain(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self._batching:
                self._batching = False
                await asyncio.sleep(BATCH_SECONDS)
            while not self._queue.empty() and len(batch) < 500:
                batch.append(self._queue.get_nowait())
            try:
                # Consecutive entries of one task travel in one call.
                for task_id, group in itertools.groupby(batch, key=lambda e: e.task_id):
                    await self._send(task_id, list(group))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _send(self, task_id: str, events: list[memory_pb2.HistoryEvent]) -> None:
        if self._channel is None:
            self._channel = channel(self.settings.memory_address, self.settings, "executor")
        stub = memory_pb2_grpc.MemoryServiceStub(self._channel)
        try:
            await stub.AppendEvents(
                memory_pb2.AppendEventsRequest(task_id=task_id, events=events),
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            # Log the first failure loudly, then quietly until the service is back.
            (log.debug if self._failing else log.warning)(
                "cannot record history in the memory service",
                address=self.settings.memory_address,
                code=exc.code().name,
                details=exc.details(),
                dropped=len(events),
            )
            self._failing = True
        else:
            if self._failing:
                log.info("memory service reachable again", address=self.settings.memory_address)
            self._failing = False
