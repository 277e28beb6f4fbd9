"""A fresh PostgreSQL database per test (and per module), from CORRAL_TEST_POSTGRES_URL.

`scripts/start-postgres` installs and starts a local PostgreSQL and prints the URL; CI exports
it. Every test here gets its own database, made from that server and dropped afterwards, and
CORRAL_SCHEDULER_DATABASE_URL / CORRAL_MEMORY_DATABASE_URL point at it, so every service the
harness starts (tests/harness.py copies os.environ) runs on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest
from harness import Cluster, MemoryAsItsCallers, cluster
from sqlalchemy.engine import make_url

from corral.db import normalize_url

# The suites re-run here are imported as `integration.<area>.<module>`; rewrite their asserts
# as pytest would have.
pytest.register_assert_rewrite("integration")

URL_VARIABLE = "CORRAL_TEST_POSTGRES_URL"
DATABASE_VARIABLES = ("CORRAL_SCHEDULER_DATABASE_URL", "CORRAL_MEMORY_DATABASE_URL")


def server_url() -> str:
    url = os.environ.get(URL_VARIABLE, "")
    if not url:
        pytest.skip(f"{URL_VARIABLE} is not set: run `export {URL_VARIABLE}=\"$(scripts/start-postgres)\"`")
    return normalize_url(url)


def _admin_dsn(url: str) -> str:
    """The same server and credentials, for asyncpg (which takes no `+asyncpg` driver part)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _run(url: str, statement: str) -> None:
    conn = await asyncpg.connect(_admin_dsn(url))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The server's URL (its database is only used to create and drop the test databases)."""
    url = server_url()
    try:
        asyncio.run(_run(url, "SELECT 1"))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"{URL_VARIABLE}={url} does not answer: {exc}")
    return url


@contextmanager
def fresh_database(server: str) -> Iterator[str]:
    name = f"corral_t_{uuid.uuid4().hex[:16]}"
    asyncio.run(_run(server, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_drop(server, name))


async def _drop(server: str, name: str) -> None:
    """DROP DATABASE ... WITH (FORCE), which cannot end an autovacuum worker (it has no role:
    "must be a member of the role whose process is being terminated", seen once in CI after a
    test's many inserts): again until that worker is done with the database."""
    for attempt in range(50):
        try:
            await _run(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except asyncpg.InsufficientPrivilegeError:
            if attempt == 49:
                raise
            await asyncio.sleep(0.2)


@pytest.fixture(scope="module", autouse=True)
def module_database(postgres_server: str) -> Iterator[str]:
    """For module-scoped services (set up before any function-scoped fixture)."""
    with pytest.MonkeyPatch.context() as patch:
        with fresh_database(postgres_server) as database:
            for variable in DATABASE_VARIABLES:
                patch.setenv(variable, database)
            yield database


@pytest.fixture(autouse=True)
def postgres_url(postgres_server: str, module_database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This test's own database; the services a test starts use it."""
    with fresh_database(postgres_server) as database:
        for variable in DATABASE_VARIABLES:
            monkeypatch.setenv(variable, database)
        yield database


# --- the fixtures tests/integration/memory/ uses, with the service on PostgreSQL ----------


@pytest.fixture
def memory_cluster(tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:
    with cluster(tmp_path, "memory") as c:
        yield c


@pytest.fixture
def memory_address(memory_cluster: Cluster) -> str:
    return memory_cluster.memory_address


@pytest.fixture
async def memory(memory_cluster: Cluster) -> AsyncIterator[MemoryAsItsCallers]:
    clients = MemoryAsItsCallers(memory_cluster)
    yield clients
    await clients.close()
