"""History the executor could not deliver yet, on disk: one append-only file per executor.

Records are a 4-byte big-endian length and a serialized HistoryEvent. A second small file holds
the offset of the first record not yet delivered, so a restarted executor goes on from there.
Every step that could be interrupted errs towards sending again (the memory service stores an
event id once), never towards skipping: the offset is reset before the file is emptied or
compacted, and a record cut short by a crash (the file's tail) is cut off when the file is opened.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import structlog
from google.protobuf.message import DecodeError

from corral.v1 import memory_pb2

log = structlog.get_logger()

HEADER = struct.Struct(">I")
# Once this much of the file has been delivered and it is more than half the file, the rest is
# copied to a fresh file (a spool that never empties while memory is slow must not grow forever).
COMPACT_AFTER_BYTES = 16 * 1024 * 1024


def spool_path(data_dir: Path, executor_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", executor_id) or "executor"
    return data_dir / "history-spool" / f"{safe}.spool"


class HistorySpool:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._offset_path = path.with_name(path.name + ".offset")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size
        self._offset = self._read_offset()
        self._cut_torn_tail()

    @property
    def pending_bytes(self) -> int:
        return self._size - self._offset

    def close(self) -> None:
        os.close(self._fd)

    def append(self, event: memory_pb2.HistoryEvent) -> bool:
        """Writes `event` at the end; False (nothing written) when it would pass max_bytes."""
        data = event.SerializeToString()
        record = HEADER.pack(len(data)) + data
        if self.pending_bytes + len(record) > self.max_bytes:
            return False
        os.write(self._fd, record)
        self._size += len(record)
        return True

    def read(self, max_events: int, max_bytes: int) -> tuple[list[memory_pb2.HistoryEvent], int]:
        """Up to `max_events` events from the first undelivered one, and the offset after them."""
        events: list[memory_pb2.HistoryEvent] = []
        at, taken = self._offset, 0
        while at < self._size and len(events) < max_events and (not events or taken < max_bytes):
            (length,) = HEADER.unpack(os.pread(self._fd, HEADER.size, at))
            data = os.pread(self._fd, length, at + HEADER.size)
            at += HEADER.size + length
            taken += length
            event = memory_pb2.HistoryEvent()
            try:
                event.ParseFromString(data)
            except DecodeError:
                log.warning("history spool: skipping an unreadable entry", path=str(self.path))
                continue
            events.append(event)
        return events, at

    def delivered(self, offset: int) -> None:
        """Everything before `offset` reached the memory service."""
        self._offset = offset
        if self._offset >= self._size:
            self._save_offset(0)
            os.ftruncate(self._fd, 0)
            self._size = self._offset = 0
        elif self._offset >= COMPACT_AFTER_BYTES and self._offset * 2 > self._size:
            self._compact()
        else:
            self._save_offset(self._offset)

    def _compact(self) -> None:
        fresh = self.path.with_name(self.path.name + ".new")
        fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        at = self._offset
        while at < self._size:
            chunk = os.pread(self._fd, min(1024 * 1024, self._size - at), at)
            os.write(fd, chunk)
            at += len(chunk)
        self._save_offset(0)  # a crash before the rename sends the old file again: no loss
        os.replace(fresh, self.path)
        os.close(self._fd)
        self._fd = fd
        self._size -= self._offset
        self._offset = 0

    def _read_offset(self) -> int:
        try:
            offset = int(self._offset_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0
        return offset if 0 <= offset <= self._size else 0

    def _save_offset(self, offset: int) -> None:
        temporary = self._offset_path.with_name(self._offset_path.name + ".tmp")
        temporary.write_text(str(offset))
        os.replace(temporary, self._offset_path)

    def _cut_torn_tail(self) -> None:
        at = self._offset
        while at + HEADER.size <= self._size:
            (length,) = HEADER.unpack(os.pread(self._fd, HEADER.size, at))
            if at + HEADER.size + length > self._size:
                break
            at += HEADER.size + length
        if at < self._size:
            log.warning("history spool: cutting off an entry cut short", path=str(self.path), bytes=self._size - at)
            os.ftruncate(self._fd, at)
            self._size = at
