"""The retention sweep's shared part: the cutoff the operator's setting gives, and the loop
each service (scheduler, memory, executor) runs its own sweep in.

Each service removes only what it owns and only what has ended: the scheduler its finished
tasks' records and events and its expired idempotency keys, memory the history of finished
tasks, the executor the directories of tasks it no longer runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from corral.config import Settings

log = structlog.get_logger()


def cutoff(settings: Settings, now: float | None = None) -> float | None:
    """What ended before this (epoch seconds) is removed; None: retention is off (0 hours)."""
    if settings.retention_hours <= 0:
        return None
    return (time.time() if now is None else now) - settings.retention_hours * 3600


def start_sweeping(name: str, settings: Settings, sweep: Callable[[], Awaitable[dict[str, int]]]) -> asyncio.Task[None]:
    """Runs `sweep` at once and then every retention_sweep_seconds, logging what it removed."""

    async def loop() -> None:
        while True:
            try:
                removed = await sweep()
                if any(removed.values()):
                    log.info("retention sweep", service=name, **removed)
            except Exception:  # the next round tries again
                log.exception("retention sweep failed", service=name)
            await asyncio.sleep(settings.retention_sweep_seconds)

    return asyncio.create_task(loop(), name=f"{name}-retention")


async def stop_sweeping(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
