"""The memory service's own metrics (its module: the other services do not show them as 0)."""

from __future__ import annotations

from prometheus_client import Counter

HISTORY_APPENDS = Counter("corral_memory_history_appends", "AppendEvents calls the memory service stored.")
HISTORY_EVENTS = Counter("corral_memory_history_events", "History events the memory service stored.")
