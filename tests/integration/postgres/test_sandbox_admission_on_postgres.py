"""The sandbox admission and idempotency suite (tests/integration/scheduler/
test_sandbox_admission.py), re-run on PostgreSQL (a fresh database per module and test)."""

from __future__ import annotations

from integration.scheduler.test_sandbox_admission import *  # noqa: F403
