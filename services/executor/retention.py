"""The executor's retention sweep: the directories of tasks that ended longer ago than the
operator's retention period (CORRAL_RETENTION_HOURS). A task this executor is running, a warm
slot, a long-lived sandbox's files (under data_dir/sandboxes, removed with the sandbox) and a
mounted filesystem are never touched."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from corral.config import Settings
from corral.retention import cutoff

log = structlog.get_logger()


def last_change(task_dir: Path) -> float:
    """When the task last wrote its directory or its log (the latest of their mtimes)."""
    latest = task_dir.lstat().st_mtime
    with contextlib.suppress(OSError):
        latest = max(latest, (task_dir / "agent.log").lstat().st_mtime)
    return latest


def _writable_and_retry(function: Callable[..., Any], path: str, _exc: object) -> None:
    """A task may leave directories without write permission: grant it, then retry."""
    with contextlib.suppress(OSError):
        parent = os.path.dirname(path)
        os.chmod(parent, stat.S_IRWXU)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, stat.S_IRWXU)
    function(path)


def remove_ended_task_dirs(tasks_dir: Path, running: set[str], before: float) -> int:
    """Removes tasks_dir/<task_id> of tasks not in `running`, unchanged since `before`."""
    removed = 0
    for entry in list(tasks_dir.iterdir()) if tasks_dir.is_dir() else []:
        name = entry.name
        if name.startswith(".") or name in running:
            continue  # warm slots (.warm) and the like; running tasks
        try:
            if entry.is_symlink():  # a run's link into a warm slot, left by a crash
                if entry.lstat().st_mtime < before:
                    entry.unlink()
                    removed += 1
                continue
            if not entry.is_dir() or os.path.ismount(entry) or last_change(entry) >= before:
                continue
            shutil.rmtree(entry, onerror=_writable_and_retry)
            removed += 1
        except OSError as exc:
            log.warning("could not remove an old task directory", path=str(entry), error=str(exc))
    return removed


async def sweep(settings: Settings, running: Callable[[], list[str]]) -> dict[str, int]:
    before = cutoff(settings)
    if before is None:
        return {}
    # The running set is read at the start: a task started later has a new directory (ids are
    # never reused), changed after `before`.
    ids = set(running())
    return {"task_dirs": await asyncio.to_thread(remove_ended_task_dirs, settings.tasks_dir, ids, before)}
