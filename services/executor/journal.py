"""agent.log and memory.json in the task directory, written by the executor as the task runs.

The task directory belongs to the sandbox user, who could plant a symlink named agent.log
pointing anywhere; the executor may be root, so every write goes through a directory fd with
O_NOFOLLOW, and memory.json is replaced by rename (which replaces a link, never follows it).
Journal failures are logged, never fatal: the task's result does not depend on them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from datetime import UTC, datetime
from typing import Any

import structlog

log = structlog.get_logger()

AGENT_LOG = "agent.log"
MEMORY_JSON = "memory.json"
# Output longer than this is shortened in agent.log (memory.json and the result keep a preview
# of CORRAL_OUTPUT_PREVIEW_BYTES; the output events keep it all).
LOG_OUTPUT_CHARS = 64 * 1024


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TaskJournal:
    """Writes through a descriptor of the task directory (SandboxLease.prepare_task_dir), its
    own copy."""

    def __init__(self, task_dir_fd: int) -> None:
        self.entries: list[dict[str, Any]] = []
        self._dir_fd: int | None = os.dup(task_dir_fd)
        self._closed = False

    def suspend(self) -> None:
        """Lets go of the task directory (it is about to move); nothing more is written."""
        self._close_dir()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._close_dir()

    def _close_dir(self) -> None:
        if self._dir_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._dir_fd)
            self._dir_fd = None

    def log(self, message: str, **outputs: str) -> None:
        """Appends one human-readable line (plus indented output blocks) to agent.log."""
        lines = [f"[{now_iso()}] {message}"]
        for name, text in outputs.items():
            if not text:
                continue
            if len(text) > LOG_OUTPUT_CHARS:
                text = text[:LOG_OUTPUT_CHARS] + f"\n... ({len(text) - LOG_OUTPUT_CHARS} more characters)"
            lines += [f"    {name} | {line}" for line in text.rstrip("\n").split("\n")]
        self._append(AGENT_LOG, ("\n".join(lines) + "\n").encode())

    def record(self, entry: dict[str, Any]) -> None:
        """Adds one entry to memory.json and rewrites it."""
        self.entries.append({**entry, "time": now_iso()})
        data = json.dumps(self.entries, indent=2, ensure_ascii=False).encode()
        self._replace(MEMORY_JSON, data)

    def _append(self, name: str, data: bytes) -> None:
        if self._dir_fd is None:
            return
        # O_NONBLOCK: a FIFO planted as agent.log must not hang the executor on open; it (or
        # any other non-regular file) is then refused.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(name, flags, 0o644, dir_fd=self._dir_fd)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, f"{name} is not a regular file")
                _write_all(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("cannot write the task journal", file=name, error=str(exc))

    def _replace(self, name: str, data: bytes) -> None:
        if self._dir_fd is None:
            return
        temp = f".{name}.{os.getpid()}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=self._dir_fd)
            fd = os.open(temp, flags, 0o644, dir_fd=self._dir_fd)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            os.replace(temp, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        except OSError as exc:
            log.warning("cannot write the task journal", file=name, error=str(exc))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
