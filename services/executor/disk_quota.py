"""The task directory's disk quota: measured while steps run, enforced by stopping the step.

A task's files live in a host directory bind-mounted into its sandbox, so neither driver's
size-limited tmpfs (/tmp) nor the per-file size limit bounds how much a task can write there in
total. Kernel quotas would need a dedicated filesystem on every executor host; instead the
executor measures the directory every `disk_check_interval_seconds` and stops the running step
while it holds more than the task's `disk_mb` or more than `sandbox_max_files` entries. A fast
writer can overshoot by what it writes in one interval (the per-file limit still applies).
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


class DiskWatch:
    """Measures `root` every `interval` seconds while running; calls `on_over(message)` each
    time it is over its quota (the task run stops the current step)."""

    def __init__(
        self, root: Path, disk_mb: int, max_files: int, interval: float, on_over: Callable[[str], None]
    ) -> None:
        self.root = root
        self.disk_mb = disk_mb
        self.max_files = max_files
        self.interval = interval
        self.on_over = on_over
        self._task: asyncio.Task[None] | None = None

    def over(self, usage: DiskUsage) -> str:
        """Why `usage` breaks the quota, or "" when it does not."""
        if usage.bytes > self.disk_mb * MIB:
            return (
                f"disk quota exceeded: the task directory holds more than its {self.disk_mb} MiB "
                f"({usage.bytes / MIB:.0f} MiB counted)"
            )
        if usage.files > self.max_files:
            return f"disk quota exceeded: the task directory holds more than {self.max_files} files"
        return ""

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name=f"disk-watch {self.root.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _watch(self) -> None:
        limit_bytes = self.disk_mb * MIB
        while True:
            await asyncio.sleep(self.interval)
            try:
                usage = await asyncio.to_thread(measure, self.root, limit_bytes, self.max_files)
            except Exception:  # never let measuring take the task down
                log.exception("could not measure a task directory", root=str(self.root))
                continue
            message = self.over(usage)
            if message:
                self.on_over(message)
