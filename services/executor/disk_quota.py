"""The task directory's disk quota, checked while steps run: a broken quota stops the step.

Where the task directory is a filesystem of its own (task_fs.py) the kernel enforces the quota
(writes past it fail with ENOSPC); this watch only asks the filesystem every
`disk_check_interval_seconds` whether it is full, to stop the step and say so in words.
Elsewhere the task's files live in a plain host directory bind-mounted into its sandbox, so the
executor measures it (scandir, st_blocks) as often and stops the running step while it holds
more than the task's `disk_mb` or more than `sandbox_max_files` entries. A fast writer can then
overshoot by what it writes in one interval (the per-file limit still applies), and files
unlinked while open are not seen.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from services.executor.drivers.base import MIB
from services.executor.task_fs import full_message

log = structlog.get_logger()


@dataclass(frozen=True)
class DiskUsage:
    bytes: int
    files: int


def measure(root: Path, stop_bytes: int, stop_files: int) -> DiskUsage:
    """Space allocated (not apparent size: sparse files cost what they hold) and the number of
    entries under `root`, without following symlinks. Stops early once past either limit."""
    total = files = 0
    seen: set[tuple[int, int]] = set()  # hard links count once
    pending = [os.fspath(root)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # removed meanwhile
                    files += 1
                    if stat.S_ISDIR(st.st_mode):
                        pending.append(entry.path)
                    elif st.st_nlink > 1:
                        if (st.st_dev, st.st_ino) in seen:
                            continue
                        seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
        except OSError:
            continue
        if total > stop_bytes or files > stop_files:
            break
    return DiskUsage(total, files)


def over_quota(usage: DiskUsage, disk_mb: int, max_files: int) -> str:
    """Why `usage` breaks the quota, or "" when it does not."""
    if usage.bytes > disk_mb * MIB:
        return (
            f"disk quota exceeded: the task directory holds more than its {disk_mb} MiB "
            f"({usage.bytes / MIB:.0f} MiB counted)"
        )
    if usage.files > max_files:
        return f"disk quota exceeded: the task directory holds more than {max_files} files"
    return ""


def check(root: Path, disk_mb: int, max_files: int) -> str:
    """Why the quota at `root` is broken (or "" when it is not): a filesystem of the sandbox's
    own (task_fs.py) is asked whether it is full, a plain directory is measured."""
    if os.path.ismount(root):
        return full_message(root, disk_mb, max_files)
    return over_quota(measure(root, disk_mb * MIB, max_files), disk_mb, max_files)


class DiskWatch:
    """Checks the quota every `interval` seconds while running; calls `on_over(message)` each
    time it is broken (the task run stops the current step). `where()` names the directory
    and its size in MiB (it may change as the task claims its sandbox)."""

    def __init__(
        self,
        where: Callable[[], tuple[Path, int]],
        max_files: int,
        interval: float,
        on_over: Callable[[str], None],
    ) -> None:
        self.where = where
        self.max_files = max_files
        self.interval = interval
        self.on_over = on_over
        self._task: asyncio.Task[None] | None = None

    async def check_now(self) -> str:
        root, disk_mb = self.where()
        return await asyncio.to_thread(check, root, disk_mb, self.max_files)

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="disk-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                message = await self.check_now()
            except Exception:  # never let measuring take the task down
                log.exception("could not measure a task directory", root=str(self.where()[0]))
                continue
            if message:
                self.on_over(message)
