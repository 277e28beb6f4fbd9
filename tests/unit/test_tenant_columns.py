"""A scheduler database made before tenants gets its tenant_id columns at start, its rows
belonging to the local tenant (create_all only makes missing tables)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from corral.db import create_engine
from services.scheduler.store import TaskStore


def test_old_tables_get_the_tenant_column_with_old_rows_local(tmp_path: Path) -> None:
    async def run() -> tuple[list[str], list[str]]:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'scheduler.db'}")
        async with engine.begin() as conn:
            # scheduler_tasks and scheduler_sandboxes as they were before tenants.
            await conn.execute(text(
                "CREATE TABLE scheduler_tasks (task_id VARCHAR(64) PRIMARY KEY, state INTEGER, spec BLOB, "
                "executor_id TEXT, error TEXT, created_at FLOAT, started_at FLOAT, finished_at FLOAT, "
                "task_dir TEXT, host_task_dir TEXT, last_sequence INTEGER)"
            ))
            await conn.execute(text(
                "CREATE TABLE scheduler_sandboxes (sandbox_id VARCHAR(64) PRIMARY KEY, state INTEGER, "
                "expires_at FLOAT, record BLOB)"
            ))
            await conn.execute(text("INSERT INTO scheduler_tasks VALUES ('old', 3, x'', '', '', 1.0, NULL, NULL, '', '', 0)"))
        store = TaskStore(engine)
        await store.create_tables()
        await store.create_tables()  # a second start adds nothing
        task = await store.get("old")
        async with engine.connect() as conn:
            columns = [row[1] for row in (await conn.execute(text("PRAGMA table_info(scheduler_sandboxes)"))).all()]
        await engine.dispose()
        assert task is not None
        return [task.tenant_id], columns

    tenants, sandbox_columns = asyncio.run(run())
    assert tenants == ["local"]
    assert "tenant_id" in sandbox_columns
