"""Database engines shared by the services that own tables (scheduler, memory)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, MetaData, event, inspect
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.schema import CreateColumn
from sqlalchemy.sql import ClauseElement, Executable

T = TypeVar("T")
# The busy timeout of every SQLite connection (seconds): another writer's transaction is waited for.
SQLITE_BUSY_SECONDS = 30
# Compiled statements a SqliteWriter keeps.
MAX_COMPILED = 256


def create_engine(url: str) -> AsyncEngine:
    """An async engine; for SQLite, WAL mode and a busy timeout so readers never block writers,
    and a file only its owner may read.

    A plain `postgresql://` (or `postgres://`) URL gets the asyncpg driver, the async one
    Corral ships; other URLs are used as given.
    """
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(parsed, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        _private_file(Path(parsed.database))
    engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_SECONDS})

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        _set_pragmas(cursor)
        cursor.close()

    return engine


def _set_pragmas(cursor: Any, busy_seconds: int = SQLITE_BUSY_SECONDS) -> None:
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={busy_seconds * 1000}")


class SqliteWriter:
    """A plain sqlite3 connection in a thread of its own, for a service's frequent writes to a
    SQLite file: a transaction costs one thread hop and ~0.1 ms of CPU, where the same through
    SQLAlchemy's async layer and aiosqlite costs a dozen hops and ~2-3 ms (measured). Same file,
    same pragmas as the engine's connections; each transaction is BEGIN IMMEDIATE .. COMMIT, so
    a caller's await returns with its rows on disk (as durable as the engine's commits).

    Not on the event loop's thread: the loop must never wait for SQLite's lock or a checkpoint's
    fsync, and committing there measured slower end to end (SubmitTask p50 13-18 ms against
    10-11 ms on the thread, at load 11: the GIL handed back and forth around each sqlite3 call)."""

    _dialect = SQLiteDialect_pysqlite(paramstyle="named")

    def __init__(self, path: str) -> None:
        self._path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._connection: sqlite3.Connection | None = None
        self._closed = False
        self.commits = 0  # transactions committed (tests count them)
        self._compiled: dict[tuple[int, tuple[str, ...]], tuple[Executable, str, dict[str, Any]]] = {}

    @classmethod
    def of(cls, engine: AsyncEngine) -> SqliteWriter | None:
        """A writer for the engine's database if it is a SQLite file (else None: a `:memory:`
        database is private to each connection)."""
        database = engine.url.database
        if not is_sqlite(engine) or not database or database == ":memory:" or database.startswith("file:"):
            return None
        return cls(database)

    def sql(self, statement: Executable, keys: Iterable[str]) -> tuple[str, dict[str, Any]]:
        """`statement` as SQL text with named parameters for the row keys `keys`, and the
        parameters it fixes itself (compiled once per statement and keys: statements are to
        be built once, at import)."""
        columns = tuple(keys)
        cached = self._compiled.get((id(statement), columns))
        if cached is None:
            compiled = cast(ClauseElement, statement).compile(dialect=self._dialect, column_keys=list(columns))
            constants = {name: value for name, value in compiled.params.items() if name not in columns}
            if len(self._compiled) >= MAX_COMPILED:  # (statements built per call: still bounded)
                self._compiled.clear()
            cached = self._compiled[(id(statement), columns)] = (statement, compiled.string, constants)
        return cached[1], cached[2]

    @classmethod
    def converter(cls, column: Any) -> Callable[[Any], Any]:
        """What the engine does to a value of `column` before storing it (a datetime becomes
        SQLAlchemy's text form), so that rows written either way read back alike."""
        process = column.type.dialect_impl(cls._dialect).bind_processor(cls._dialect)
        return process if process is not None else (lambda value: value)

    async def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work(connection)` in one transaction, committed on return; sqlite3's errors come
        out as SQLAlchemy's (IntegrityError...), as the engine's would."""
        if self._closed:
            raise RuntimeError("the SQLite writer is closed")
        result = await asyncio.get_running_loop().run_in_executor(self._thread, self._run, work)
        self.commits += 1
        return result

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            if self._connection is None:
                self._connection = _connect(self._path, busy_seconds=SQLITE_BUSY_SECONDS)
            self._connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise DBAPIError.instance("BEGIN IMMEDIATE", None, exc, sqlite3.Error) from exc
        return _finish(self._connection, work)

    async def close(self) -> None:
        """Closes the connection and the thread (again: nothing)."""
        if self._closed:
            return
        self._closed = True

        def close() -> None:
            if self._connection is not None:
                self._connection.close()

        await asyncio.get_running_loop().run_in_executor(self._thread, close)
        self._thread.shutdown(wait=False)


def _connect(path: str, busy_seconds: int) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=busy_seconds, isolation_level=None, check_same_thread=False)
    _set_pragmas(connection, busy_seconds)
    return connection


def _finish(connection: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """Runs `work` in the transaction just begun on `connection`, and commits it (or rolls it
    back and raises)."""
    try:
        try:
            result = work(connection)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise DBAPIError.instance(None, None, exc, sqlite3.Error) from exc
    return result


def _private_file(path: Path) -> None:
    """Creates the database file readable by its service only (it holds every task's env);
    SQLite gives its -wal and -shm files the database file's permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for existing in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if existing.exists():
            os.chmod(existing, 0o600)


def normalize_url(url: str) -> str:
    """`postgres://` and `postgresql://` (no driver named) become `postgresql+asyncpg://`."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def add_missing_columns(conn: Connection, metadata: MetaData) -> None:
    """Adds to existing tables the columns added since they were made (create_all makes only
    missing tables). Only columns with a server default, or nullable ones (NULL in the rows
    already there), can be added this way, which is how new columns are declared."""
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present or (column.server_default is None and not column.nullable):
                continue
            ddl = CreateColumn(column).compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {ddl}")
