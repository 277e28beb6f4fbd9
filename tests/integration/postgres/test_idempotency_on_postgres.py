"""The idempotency-key suite (tests/integration/scheduler/test_idempotency.py), re-run on
PostgreSQL: there concurrent transactions really run at once, and only the unique key stops
a second task (see this folder's conftest for the fresh database per test)."""

from __future__ import annotations

from integration.scheduler.test_idempotency import *  # noqa: F403
