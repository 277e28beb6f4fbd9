"""The scheduler's retention sweep: finished tasks (records, steps, events) once the
operator's retention period has passed since they ended, and expired idempotency keys.
Scheduled and running tasks are never removed (only terminal states qualify)."""

from __future__ import annotations

import time

from corral.config import Settings
from corral.retention import cutoff

from .idempotency import IdempotencyKeys
from .store import TaskStore


async def sweep(store: TaskStore, keys: IdempotencyKeys, settings: Settings) -> dict[str, int]:
    now = time.time()
    removed = {"idempotency_keys": await keys.sweep(now), "tasks": 0}
    before = cutoff(settings, now)
    if before is not None:
        removed["tasks"] = await store.remove_finished_before(before)
    return removed
