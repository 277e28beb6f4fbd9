"""The memory service's test suite (tests/integration/memory/), re-run on PostgreSQL.

The test functions and fixtures are imported unchanged; this folder's conftest gives each test
(and module) a fresh PostgreSQL database and points CORRAL_SCHEDULER_DATABASE_URL and
CORRAL_MEMORY_DATABASE_URL at it, so every service the tests start stores there.
"""

from __future__ import annotations

from integration.memory.test_memory_service import *  # noqa: F403

# Opens a SQLite file by design; test_stores.py covers a restart on PostgreSQL.
del test_history_survives_a_restart_of_the_store  # noqa: F821
