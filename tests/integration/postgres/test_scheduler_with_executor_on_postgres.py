"""The scheduler-with-executor test suite (tests/integration/scheduler/), re-run on PostgreSQL.

The test functions and fixtures are imported unchanged; this folder's conftest gives each test
(and module) a fresh PostgreSQL database and points CORRAL_SCHEDULER_DATABASE_URL and
CORRAL_MEMORY_DATABASE_URL at it, so every service the tests start stores there.
"""

from __future__ import annotations

from integration.scheduler.test_with_executor import *  # noqa: F403
