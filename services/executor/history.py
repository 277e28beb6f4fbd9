"""Records each task's history in the memory service, in the background, at least once.

Steps must not wait on the memory service, and its absence must not lose history. Entries wait
in a bounded queue in memory, drained by one worker (one worker keeps each task's entries in
order). When a call fails, or the queue is full, the queue and every entry after it go to the
executor's spool on disk (history_spool.py), in order, until the spool has been delivered; the
worker retries with a capped backoff meanwhile. Each entry carries an id (`event_id`) so one
delivered twice (sent, then retried because the answer was lost) is stored once. Only past
CORRAL_EXECUTOR_HISTORY_SPOOL_BYTES are entries dropped, counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections import deque

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from corral.config import Settings
from corral.grpc_server import channel
from corral.tracing import Contexts
from corral.v1 import memory_pb2, memory_pb2_grpc
from services.executor.history_spool import HistorySpool, spool_path

log = structlog.get_logger()

# What waits in memory before it goes to disk.
QUEUE_EVENTS = 10_000
QUEUE_BYTES = 32 * 1024 * 1024
# One call carries at most this much (well below the gRPC message limit).
BATCH_EVENTS = 500
BATCH_BYTES = 8 * 1024 * 1024
CALL_TIMEOUT_SECONDS = 3.0
RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 2.0
# How long entries recorded with `batch` wait for others to travel with (a sandbox's calls come
# many a second: one AppendEvents each would cost every call more than its own work; a task's
# entries wait for its end, so a one-step task's four travel in one call, not two or three).
# An entry recorded without `batch` ends the wait.
BATCH_SECONDS = 0.2
# The memory service refused the entries themselves: sending them again would not help.
REFUSED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
}


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
    def __init__(self, settings: Settings, executor_id: str = "") -> None:
        self.settings = settings
        self._spool_path = spool_path(settings.data_dir, executor_id or settings.executor_id)
        self._spool: HistorySpool | None = None
        self._queue: deque[memory_pb2.HistoryEvent] = deque()
        self._queued_bytes = 0
        # Bumped when the queue moves to the spool: a batch sent from the queue before then is
        # not taken off it afterwards (it is in the spool, sent again, stored once).
        self._generation = 0
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()  # an entry recorded without `batch` waits
        self._idle = asyncio.Event()
        self._idle.set()
        self._channel: grpc.aio.Channel | None = None
        self._stub: memory_pb2_grpc.MemoryServiceAsyncStub | None = None  # one, on the one channel
        self._worker: asyncio.Task[None] | None = None
        self._failing = False
        self._batching = False
        self.dropped = 0
        self.traces = Contexts()  # each task's trace, for the AppendEvents sent in the background

    @property
    def spooled_bytes(self) -> int:
        """What waits on disk for the memory service."""
        return self._spool.pending_bytes if self._spool is not None else 0

    @property
    def undelivered_bytes(self) -> int:
        """What waits for the memory service, in memory and on disk."""
        return self._queued_bytes + self.spooled_bytes

    def start(self) -> None:
        """Starts the worker; history spooled by an earlier run is delivered first."""
        if self._worker is None:
            self._open_spool()
            self._worker = asyncio.get_running_loop().create_task(self._drain())
            if self.spooled_bytes:
                log.info("history spooled by an earlier run will be delivered",
                         path=str(self._spool_path), bytes=self.spooled_bytes)
                self._idle.clear()
                self._wake.set()

    def record(self, event: memory_pb2.HistoryEvent, batch: bool = False) -> None:
        """Queues `event` (never waits); with `batch`, the next send waits BATCH_SECONDS for more
        (or for an entry recorded without)."""
        self._batching = self._batching or batch
        if not batch:
            self._urgent.set()
        self.start()
        if not event.event_id:
            event.event_id = uuid.uuid4().hex
        self.traces.remember(event.task_id)
        size = event.ByteSize()
        spooling = self.spooled_bytes > 0 or self._failing
        full = len(self._queue) >= QUEUE_EVENTS or self._queued_bytes + size > QUEUE_BYTES
        if (spooling or full) and self._spill():
            self._to_spool(event)
        elif full:
            self._drop(event, "the history queue is full and there is no spool")
        else:
            self._queue.append(event)
            self._queued_bytes += size
        self._idle.clear()
        self._wake.set()

    async def close(self, flush_seconds: float = 2.0) -> None:
        """Sends what waits (for at most `flush_seconds`, unless the memory service is already
        failing); the rest stays in the spool for the next run."""
        if self._worker is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flushed(), flush_seconds)
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
            if self._queue and not self._spill():
                log.warning("history not delivered before the executor stopped", dropped=len(self._queue))
            if self._spool is not None:
                if self._spool.pending_bytes:
                    log.info("history left in the spool for the next run",
                             path=str(self._spool_path), bytes=self._spool.pending_bytes)
                self._spool.close()
                self._spool = None
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None
            self._stub = None

    async def _flushed(self) -> None:
        while not self._idle.is_set() and not self._failing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 0.05)

    # --- where entries wait --------------------------------------------------------------

    def _open_spool(self) -> None:
        if self._spool is None and self.settings.executor_history_spool_bytes > 0:
            try:
                self._spool = HistorySpool(self._spool_path, self.settings.executor_history_spool_bytes)
            except OSError as exc:
                log.warning("cannot open the history spool; undeliverable history will be dropped",
                            path=str(self._spool_path), error=str(exc))

    def _spill(self) -> bool:
        """Moves the queue to the spool (behind which every later entry goes); False: no spool."""
        if self._spool is None:
            return False
        if self._queue:
            self._generation += 1
            queued, self._queue, self._queued_bytes = self._queue, deque(), 0
            for event in queued:
                self._to_spool(event)
        return True

    def _to_spool(self, event: memory_pb2.HistoryEvent) -> None:
        assert self._spool is not None
        try:
            written = self._spool.append(event)
        except OSError as exc:
            self._drop(event, f"cannot write the history spool: {exc}")
            return
        if not written:
            self._drop(event, f"the history spool holds its limit ({self._spool.max_bytes} bytes, "
                              "CORRAL_EXECUTOR_HISTORY_SPOOL_BYTES)")

    def _drop(self, event: memory_pb2.HistoryEvent, why: str) -> None:
        self.dropped += 1
        # Loudly for the first and then every thousandth: an outage must not flood the log.
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning("history entry dropped", reason=why, task_id=event.task_id, dropped_total=self.dropped)

    # --- delivery ------------------------------------------------------------------------

    async def _drain(self) -> None:
        delay = RETRY_FIRST_SECONDS
        while True:
            if not self._queue and not self.spooled_bytes:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._batching and not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(BATCH_SECONDS):
                        await self._urgent.wait()
            self._batching = False
            self._urgent.clear()
            if self._spool is not None and self._spool.pending_bytes:
                events, end = self._spool.read(BATCH_EVENTS, BATCH_BYTES)
                if await self._deliver(events):
                    self._spool.delivered(end)
                    delay = RETRY_FIRST_SECONDS
                    continue
            else:
                generation = self._generation
                events = self._take_batch()
                if await self._deliver(events):
                    if generation == self._generation:
                        for _ in events:
                            self._queued_bytes -= self._queue.popleft().ByteSize()
                    delay = RETRY_FIRST_SECONDS
                    continue
                self._spill()  # kept on disk from now on, in case the executor stops
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    def _take_batch(self) -> list[memory_pb2.HistoryEvent]:
        events: list[memory_pb2.HistoryEvent] = []
        size = 0
        for event in itertools.islice(self._queue, BATCH_EVENTS):
            if events and size + event.ByteSize() > BATCH_BYTES:
                break
            events.append(event)
            size += event.ByteSize()
        return events

    async def _deliver(self, events: list[memory_pb2.HistoryEvent]) -> bool:
        """Sends `events`, consecutive entries of one task in one call; False if they must be
        sent again (some may have arrived: the memory service stores each event id once)."""
        for task_id, group in itertools.groupby(events, key=lambda e: e.task_id):
            if not await self._send(task_id, list(group)):
                return False
        return True

    async def _send(self, task_id: str, events: list[memory_pb2.HistoryEvent]) -> bool:
        if self._channel is None or self._stub is None:
            self._channel = channel(self.settings.memory_address, self.settings, "executor")
            self._stub = memory_pb2_grpc.MemoryServiceStub(self._channel)
        stub = self._stub
        trace = self.traces.attach(task_id)
        try:
            await stub.AppendEvents(
                memory_pb2.AppendEventsRequest(task_id=task_id, events=events),
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in REFUSED:
                return await self._refused(task_id, events, exc)
            # Log the first failure loudly, then quietly until the service is back.
            (log.debug if self._failing else log.warning)(
                "cannot record history in the memory service; keeping it to send again",
                address=self.settings.memory_address,
                code=exc.code().name,
                details=exc.details(),
            )
            self._failing = True
            return False
        finally:
            Contexts.detach(trace)
        if self._failing:
            log.info("memory service reachable again; delivering kept history",
                     address=self.settings.memory_address, spooled_bytes=self.spooled_bytes)
        self._failing = False
        return True

    async def _refused(
        self, task_id: str, events: list[memory_pb2.HistoryEvent], exc: grpc.aio.AioRpcError
    ) -> bool:
        """The memory service refused a request: one by one, so only the bad entry is lost."""
        if len(events) == 1:
            self._drop(events[0], f"the memory service refused it: {exc.code().name}: {exc.details()}")
            return True
        for event in events:
            if not await self._send(task_id, [event]):
                return False
        return True
