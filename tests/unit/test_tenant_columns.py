"""A scheduler database made before tenants gets its tenant_id columns at start, its rows
belonging to the local tenant (create_all only makes missing tables)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import inspect, text

from corral.db import create_engine, is_sqlite
from services.scheduler import sandboxes  # noqa: F401 (its table is in the metadata create_tables uses)
from services.scheduler.store import TaskStore


def test_old_tables_get_the_tenant_column_with_old_rows_local(tmp_path: Path) -> None:
    assert_old_tables_migrate(f"sqlite+aiosqlite:///{tmp_path / 'scheduler.db'}")


def assert_old_tables_migrate(url: str) -> None:
    """Also run on PostgreSQL by tests/integration/postgres/test_stores.py."""

    async def run() -> tuple[list[str], list[str]]:
        engine = create_engine(url)
        blob = "BLOB" if is_sqlite(engine) else "BYTEA"
        async with engine.begin() as conn:
            # scheduler_tasks and scheduler_sandboxes as they were before tenants.
            await conn.execute(text(
                f"CREATE TABLE scheduler_tasks (task_id VARCHAR(64) PRIMARY KEY, state INTEGER, spec {blob}, "
                "executor_id TEXT, error TEXT, created_at FLOAT, started_at FLOAT, finished_at FLOAT, "
                "task_dir TEXT, host_task_dir TEXT, last_sequence INTEGER)"
            ))
            await conn.execute(text(
                "CREATE TABLE scheduler_sandboxes (sandbox_id VARCHAR(64) PRIMARY KEY, state INTEGER, "
                f"expires_at FLOAT, record {blob})"
            ))
            await conn.execute(text(
                "INSERT INTO scheduler_tasks VALUES ('old', 3, :spec, '', '', 1.0, NULL, NULL, '', '', 0)"
            ), {"spec": b""})
        store = TaskStore(engine)
        await store.create_tables()
        await store.create_tables()  # a second start adds nothing
        task = await store.get("old")
        async with engine.connect() as conn:
            columns = await conn.run_sync(
                lambda sync: [c["name"] for c in inspect(sync).get_columns("scheduler_sandboxes")]
            )
        await engine.dispose()
        assert task is not None
        return [task.tenant_id], columns

    tenants, sandbox_columns = asyncio.run(run())
    assert tenants == ["local"]
    assert "tenant_id" in sandbox_columns
