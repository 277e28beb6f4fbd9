"""Scheduler replicas on a real PostgreSQL (CORRAL_TEST_POSTGRES_URL; a fresh database per
module) with real executors: the fault tests' stack (tests/integration/fault/fault_stack.py)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from corral.db import normalize_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fault"))

URL_VARIABLE = "CORRAL_TEST_POSTGRES_URL"


async def _run(url: str, statement: str) -> None:
    conn = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A database of its own on the server of CORRAL_TEST_POSTGRES_URL, dropped afterwards."""
    server = os.environ.get(URL_VARIABLE, "")
    if not server:
        pytest.skip(f"{URL_VARIABLE} is not set (replicas need PostgreSQL): "
                    f"run `export {URL_VARIABLE}=\"$(scripts/start-postgres)\"`")
    server = normalize_url(server)
    name = f"corral_failover_{uuid.uuid4().hex[:12]}"
    asyncio.run(_run(server, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_run(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
