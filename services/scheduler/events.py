"""The task event log: numbered, fanned out to watchers at once, persisted in the background.

Watchers should see an event the moment the scheduler learns of it, so the database write is
not on that path: `append` numbers the event, keeps it in memory while the task is live and
wakes watchers; one writer task persists events in order, many per transaction. Memory stays
bounded whatever a task outputs: a task's in-memory log holds its events not yet stored plus
at most KEEP_STORED_BYTES of its latest stored ones (older ones are read from the database),
appends wait while MAX_QUEUED_BYTES are unstored, and a read returns at most READ_BYTES. Once a
task's `finished` event is stored, its log stays in memory only if it is whole and small
(ENDED_LOG_BYTES; the ENDED_LOGS latest such tasks), so a watcher a moment behind, or one that
begins just after the end, reads no database; other reads go to the database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field

import structlog

from corral.v1 import task_pb2

from .store import TaskStore

log = structlog.get_logger()

MAX_BATCH = 500
# Bytes of events waiting for the database past which an append waits (the executor's stream
# then waits too, through gRPC flow control), so a slow database cannot grow the scheduler.
MAX_QUEUED_BYTES = 64 * 1024 * 1024
# Bytes of events one read returns at most (at least one event): a page of output events.
READ_BYTES = 4 * 1024 * 1024
# Bytes of a live task's stored events kept in memory for watchers behind the latest.
KEEP_STORED_BYTES = 256 * 1024
# Ended tasks whose whole log (at most ENDED_LOG_BYTES) stays in memory.
ENDED_LOGS = 1024
ENDED_LOG_BYTES = 16 * 1024


@dataclass
class _LiveLog:
    # Sequence of events[0]; earlier events are already in the database.
    first: int
    last: int
    events: list[task_pb2.TaskEvent] = field(default_factory=list)
    stored_through: int = 0  # events up to this sequence are in the database
    stored_bytes: int = 0  # of those still in `events`


class EventLog:
    def __init__(self, store: TaskStore) -> None:
        self._store = store
        self._live: dict[str, _LiveLog] = {}
        self._ended: OrderedDict[str, _LiveLog] = OrderedDict()  # whole small logs of ended tasks
        self._signals: dict[str, asyncio.Event] = {}
        # Each event with its executor's number for it (0: the scheduler's own event).
        self._queue: asyncio.Queue[tuple[task_pb2.TaskEvent, int]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._opening: dict[str, asyncio.Lock] = {}
        self._queued_bytes = 0
        self._room = asyncio.Event()
        self._room.set()

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="event-writer")

    async def stop(self) -> None:
        """Persists what is still queued, then stops the writer."""
        await self._queue.join()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    def open_new(self, task_id: str) -> None:
        """Starts the log of a task that has no events yet (just submitted)."""
        self._live[task_id] = _LiveLog(first=1, last=0)

    async def append(self, event: task_pb2.TaskEvent, source_sequence: int = 0) -> task_pb2.TaskEvent:
        live = self._live.get(event.task_id) or await self._open_existing(event.task_id)
        live.last += 1
        event.sequence = live.last
        if not event.HasField("time"):
            event.time.GetCurrentTime()
        live.events.append(event)
        self._queue.put_nowait((event, source_sequence))
        self._queued_bytes += event.ByteSize()
        self._notify(event.task_id)
        if self._queued_bytes > MAX_QUEUED_BYTES:
            self._room.clear()
            await self._room.wait()
        return event

    async def after(self, task_id: str, after: int, limit: int = 500) -> list[task_pb2.TaskEvent]:
        """Events with sequence > `after`, from memory while the task is live."""
        live = self._live.get(task_id) or self._ended.get(task_id)
        if live is not None and after + 1 >= live.first:
            start = after + 1 - live.first
            return within_read_bytes(live.events[start : start + limit])
        return await self._store.events_after(task_id, after, limit, READ_BYTES)

    def signal(self, task_id: str) -> asyncio.Event:
        """An event set at the task's next append; take it before reading, then wait on it."""
        signal = self._signals.get(task_id)
        if signal is None:
            signal = self._signals[task_id] = asyncio.Event()
        return signal

    def _notify(self, task_id: str) -> None:
        signal = self._signals.pop(task_id, None)
        if signal is not None:
            signal.set()

    async def _open_existing(self, task_id: str) -> _LiveLog:
        lock = self._opening.setdefault(task_id, asyncio.Lock())
        async with lock:
            live = self._live.get(task_id)
            if live is None:
                # Nothing of this task is queued (it has no live log), so the stored
                # sequence is the true last one.
                last = await self._store.last_sequence(task_id)
                live = self._live[task_id] = _LiveLog(first=last + 1, last=last)
        self._opening.pop(task_id, None)
        return live

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._persist(batch)
            finally:
                self._queued_bytes -= sum(event.ByteSize() for event, _ in batch)
                if self._queued_bytes <= MAX_QUEUED_BYTES:
                    self._room.set()
                for _ in batch:
                    self._queue.task_done()

    async def _persist(self, pairs: list[tuple[task_pb2.TaskEvent, int]]) -> None:
        batch = [event for event, _ in pairs]
        for attempt in range(3):
            try:
                await self._store.insert_events(batch, [source for _, source in pairs])
                break
            except Exception:
                log.exception("storing task events failed", events=len(batch), attempt=attempt + 1)
                await asyncio.sleep(0.5 * (attempt + 1))
        else:
            # Keep them in memory: watchers still see them; a restart loses them.
            return
        for event in batch:
            live = self._live.get(event.task_id)
            if live is None or event.sequence < live.first:
                continue
            live.stored_through = max(live.stored_through, event.sequence)
            live.stored_bytes += event.ByteSize()
            if event.HasField("finished") and live.last == event.sequence:
                del self._live[event.task_id]
                if live.first == 1 and live.stored_bytes <= ENDED_LOG_BYTES:
                    self._ended[event.task_id] = live
                    if len(self._ended) > ENDED_LOGS:
                        self._ended.popitem(last=False)
                continue
            # The oldest stored events leave memory: a watcher behind them reads the database.
            drop = 0
            while live.stored_bytes > KEEP_STORED_BYTES and drop < len(live.events):
                oldest = live.events[drop]
                if oldest.sequence > live.stored_through:
                    break
                live.stored_bytes -= oldest.ByteSize()
                drop += 1
            if drop:
                del live.events[:drop]
                live.first += drop


def within_read_bytes(events: list[task_pb2.TaskEvent]) -> list[task_pb2.TaskEvent]:
    """The first of `events` that fit in READ_BYTES (at least one)."""
    total = 0
    for count, event in enumerate(events):
        total += event.ByteSize()
        if total > READ_BYTES and count:
            return events[:count]
    return events
