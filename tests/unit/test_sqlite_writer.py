"""corral.db.SqliteWriter on a real SQLite file: while another connection holds the write lock,
a transaction waits on the writer's thread (the event loop goes on meanwhile) and commits once
the lock is free. sqlite3's errors come out as SQLAlchemy's, as the engine's would."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from corral.db import SqliteWriter

pytestmark = pytest.mark.timeout(30)


def database(tmp_path: Path) -> str:
    path = str(tmp_path / "w.db")
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
    return path


def insert(k: str, v: int) -> Callable[[sqlite3.Connection], object]:
    return lambda conn: conn.execute("INSERT INTO t VALUES (?, ?)", (k, v))


def rows(path: str) -> list[tuple[str, int]]:
    with sqlite3.connect(path) as conn:
        return sorted(conn.execute("SELECT k, v FROM t").fetchall())


async def test_a_held_write_lock_is_waited_for_off_the_loop_then_the_rows_are_committed(tmp_path: Path) -> None:
    path = database(tmp_path)
    writer = SqliteWriter(path)
    await writer.transaction(insert("a", 1))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    holder.execute("INSERT INTO t VALUES ('h', 0)")
    waiting = asyncio.create_task(writer.transaction(insert("b", 2)))
    ticks = 0
    for _ in range(20):  # the loop is not blocked while the writer waits for the lock
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 20 and not waiting.done()
    holder.execute("COMMIT")
    await waiting
    await writer.transaction(insert("c", 3))
    assert rows(path) == [("a", 1), ("b", 2), ("c", 3), ("h", 0)]
    assert writer.commits == 3
    holder.close()
    await writer.close()


async def test_a_failed_transaction_is_rolled_back_and_raises_sqlalchemys_error(tmp_path: Path) -> None:
    path = database(tmp_path)
    writer = SqliteWriter(path)
    await writer.transaction(insert("a", 1))

    def two(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES ('b', 2)")
        conn.execute("INSERT INTO t VALUES ('a', 9)")  # the key is taken

    with pytest.raises(IntegrityError):
        await writer.transaction(two)
    assert rows(path) == [("a", 1)]  # 'b' rolled back with it
    await writer.transaction(insert("b", 2))  # the connection is usable again
    assert rows(path) == [("a", 1), ("b", 2)]
    await writer.close()
    await writer.close()  # (again: nothing)
