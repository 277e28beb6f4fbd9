"""The task event log: numbered, fanned out to watchers at once, persisted in the background.

Watchers should see an event the moment the scheduler learns of it, so the database write is
not on that path: `append` numbers the event, keeps it in memory while the task is live and
wakes watchers; one writer task persists events in order, many per transaction. Once a task's
`finished` event is stored, its in-memory log is dropped and reads go to the database.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import structlog

from corral.v1 import task_pb2

from .store import TaskStore

log = structlog.get_logger()

MAX_BATCH = 500


@dataclass
class _LiveLog:
    # Sequence of events[0]; earlier events are already in the database.
    first: int
    last: int
    events: list[task_pb2.TaskEvent] = field(default_factory=list)


class EventLog:
    def __init__(self, store: TaskStore) -> None:
        self._store = store
        self._live: dict[str, _LiveLog] = {}
        self._signals: dict[str, asyncio.Event] = {}
        # Each event with its executor's number for it (0: the scheduler's own event).
        self._queue: asyncio.Queue[tuple[task_pb2.TaskEvent, int]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._opening: dict[str, asyncio.Lock] = {}

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
        self._notify(event.task_id)
        return event

    async def after(self, task_id: str, after: int, limit: int = 500) -> list[task_pb2.TaskEvent]:
        """Events with sequence > `after`, from memory while the task is live."""
        live = self._live.get(task_id)
        if live is not None and after + 1 >= live.first:
            start = after + 1 - live.first
            return live.events[start : start + limit]
        return await self._store.events_after(task_id, after, limit)

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
            if event.HasField("finished"):
                live = self._live.get(event.task_id)
                if live is not None and live.last == event.sequence:
                    del self._live[event.task_id]
