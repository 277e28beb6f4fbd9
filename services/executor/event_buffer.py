"""A task's events as the executor keeps them: numbered 1, 2, ... and held until a scheduler
has read them all, so a scheduler that restarts can resume the stream where it stopped.

Held in memory up to a byte bound (CORRAL_EXECUTOR_EVENT_BUFFER_BYTES); past it, what is in
memory goes to a spill file in the executor's data directory and only offsets stay in memory.
Every reader follows the buffer at its own pace (`follow`), from any event after the first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from corral.v1 import task_pb2


class EventBuffer:
    def __init__(self, spill_path: Path, memory_limit: int) -> None:
        self._spill_path = spill_path
        self._memory_limit = memory_limit
        self._spilled: list[tuple[int, int]] = []  # (offset, length) of events 1..len(_spilled)
        self._memory: list[task_pb2.TaskEvent] = []  # the events after those
        self._memory_bytes = 0
        self._changed = asyncio.Event()
        self.closed = False

    @property
    def last(self) -> int:
        return len(self._spilled) + len(self._memory)

    def append(self, event: task_pb2.TaskEvent) -> None:
        event.sequence = self.last + 1
        self._memory.append(event)
        self._memory_bytes += event.ByteSize()
        if self._memory_bytes > self._memory_limit:
            self._spill()
        self._wake()

    def close(self) -> None:
        """No event comes after this (the task's `finished` is in)."""
        self.closed = True
        self._wake()

    def read(self, after: int, limit: int = 64) -> list[task_pb2.TaskEvent]:
        """Events with sequence > `after` (at most `limit`)."""
        events: list[task_pb2.TaskEvent] = []
        spilled = len(self._spilled)
        if after < spilled:
            with open(self._spill_path, "rb") as file:
                for offset, length in self._spilled[after : after + limit]:
                    file.seek(offset)
                    event = task_pb2.TaskEvent()
                    event.ParseFromString(file.read(length))
                    events.append(event)
        start = max(0, after - spilled)
        events.extend(self._memory[start : start + limit - len(events)])
        return events

    async def follow(self, after: int) -> AsyncIterator[task_pb2.TaskEvent]:
        """The events after `after`, then each as it comes, until the buffer is closed."""
        while True:
            changed = self._changed
            events = self.read(after)
            for event in events:
                after = event.sequence
                yield event
            if events:
                continue
            if self.closed:
                return
            await changed.wait()

    def spill_all(self) -> None:
        """Moves what is in memory to the spill file (the events are only kept in case)."""
        if self._memory:
            self._spill()

    def discard(self) -> None:
        self._memory.clear()
        self._spilled.clear()
        with contextlib.suppress(FileNotFoundError):
            self._spill_path.unlink()

    def _spill(self) -> None:
        self._spill_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._spill_path, "ab") as file:
            offset = file.tell()
            for event in self._memory:
                raw = event.SerializeToString()
                file.write(raw)
                self._spilled.append((offset, len(raw)))
                offset += len(raw)
        self._memory.clear()
        self._memory_bytes = 0

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
