"""Per-tenant quotas on submissions: tasks and sandboxes submitted per second, a token bucket
per tenant (bursts of twice the rate). The concurrent-task and concurrent-sandbox quotas are
counted from the database where the records are made (core.py, sandboxes.py).

Admins (and the keyless local tenant) are not limited. The buckets live in this process: a
restarted scheduler starts them full.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from corral.errors import QuotaExceeded

from .principal import Principal


@dataclass
class _Bucket:
    tokens: float
    updated: float


class SubmissionRate:
    def __init__(self, per_second: float) -> None:
        self.per_second = per_second
        self.burst = max(1.0, 2 * per_second)
        self._buckets: dict[str, _Bucket] = {}

    def take(self, who: Principal) -> None:
        """Spends one submission of `who`'s tenant, or raises QuotaExceeded."""
        if who.admin:
            return
        now = time.monotonic()
        bucket = self._buckets.setdefault(who.tenant_id, _Bucket(self.burst, now))
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.per_second)
        bucket.updated = now
        if bucket.tokens < 1:
            wait = math.ceil((1 - bucket.tokens) / self.per_second)
            raise QuotaExceeded(
                f"quota submissions_per_second exceeded: tenant {who.tenant_id!r} may submit "
                f"{self.per_second:g} tasks or sandboxes per second; retry in {wait}s",
                retry_after=wait,
            )
        bucket.tokens -= 1
