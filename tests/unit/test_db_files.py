"""The SQLite databases (every task's env is in scheduler.db) are readable by their service
only: before, scheduler.db was created 0644 (world-readable) under the umask."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

from sqlalchemy import text

from corral.db import create_engine


def test_sqlite_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "scheduler.db"
    old_umask = os.umask(0o022)
    try:
        async def write() -> None:
            engine = create_engine(f"sqlite+aiosqlite:///{path}")
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE t (x TEXT)"))
                await conn.execute(text("INSERT INTO t VALUES ('secret')"))
                modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
            await engine.dispose()
            assert modes == {name: 0o600 for name in modes}, modes
            assert {"scheduler.db", "scheduler.db-wal", "scheduler.db-shm"} <= set(modes)

        asyncio.run(write())
        # An existing world-readable file is tightened too.
        path.chmod(0o644)
        create_engine(f"sqlite+aiosqlite:///{path}")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)
