"""The memory service's core: task history and notes over SQLAlchemy asyncio.

Plain Python types in and out, so the store can be tested and reused without gRPC. The SQL
is portable (no SQLite-only constructs): LIKE with an explicit ESCAPE works on SQLite and
PostgreSQL alike, and lower() on both sides makes it case-insensitive everywhere. On PostgreSQL
an advisory lock also orders appends to one task across processes, and values it would refuse
(NUL characters, over-long ids) are refused up front, so both databases answer the same.

Delivery is at-least-once (the executor retries what it could not confirm), so an event with an
`event_id` already stored for its task is not stored again and takes no sequence number: the
sequences stay 1, 2, 3... without gaps or doubles.

An append is one INSERT in one transaction: each task's last sequence is kept in memory (read
once from the database), and the unique constraints on (task, sequence) and (task, event_id)
catch what memory cannot know (another replica's append, a redelivered event): then the append
is rolled back and done the careful way (max(sequence) and the stored event ids read under the
lock), and memory takes the stored figures again. On a SQLite file, appends run on a direct
sqlite3 connection (corral.db.SqliteWriter: one thread hop, not a dozen).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    case,
    delete,
    func,
    or_,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from corral.bounds import MAX_SEARCH_QUERY_CHARS
from corral.db import SqliteWriter, add_missing_columns, create_engine
from corral.errors import InvalidArgument, NotFound
from corral.v1.memory_pb2 import HISTORY_KIND_TASK_FINISHED

# InvalidArgument and NotFound (corral.errors) are what the store raises; callers import them here too.
__all__ = ["HistoryRecord", "InvalidArgument", "MemoryStore", "NotFound", "NoteRecord", "SearchResult"]

DEFAULT_LIST_LIMIT = 1000
MAX_LIST_LIMIT = 10000
DEFAULT_SEARCH_LIMIT = 50
MAX_SEARCH_LIMIT = 500
SNIPPET_RADIUS = 60
# Another process appending to the same task (two memory replicas on one database) can race
# us to a sequence number; the unique constraint catches it and we try again.
APPEND_RETRIES = 5
# Column lengths, checked before writing (PostgreSQL enforces them, SQLite does not).
TASK_ID_MAX = 128
SHORT_TEXT_MAX = 32
NAMESPACE_MAX = 256
KEY_MAX = 512
EVENT_ID_MAX = 128
# Tasks whose last sequence is kept in memory (the least recently appended to go first).
KNOWN_SEQUENCES = 10000

metadata = MetaData()

history_events = Table(
    "history_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(TASK_ID_MAX), nullable=False, index=True),
    Column("sequence", BigInteger, nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("kind", Integer, nullable=False),
    Column("step_index", Integer, nullable=False),
    Column("tool", String(SHORT_TEXT_MAX), nullable=False, default=""),
    Column("action", Text, nullable=False, default=""),
    Column("state", String(SHORT_TEXT_MAX), nullable=False, default=""),
    Column("exit_code", Integer, nullable=True),
    Column("stdout", Text, nullable=False, default=""),
    Column("stderr", Text, nullable=False, default=""),
    Column("error", Text, nullable=False, default=""),
    # The executor's id for the event; NULL (never equal to another) for events sent without one.
    Column("event_id", String(EVENT_ID_MAX), nullable=True),
    UniqueConstraint("task_id", "sequence", name="uq_history_task_sequence"),
)
# An index, not a table constraint, so a database made before event ids gets it too.
history_event_ids = Index("uq_history_task_event_id", history_events.c.task_id, history_events.c.event_id, unique=True)

notes = Table(
    "notes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("namespace", String(NAMESPACE_MAX), nullable=False),
    Column("key", String(KEY_MAX), nullable=False),
    Column("value", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("namespace", "key", name="uq_notes_namespace_key"),
)

SEARCHABLE_COLUMNS = ("action", "stdout", "stderr", "error")


@dataclass
class HistoryRecord:
    task_id: str
    kind: int
    step_index: int = -1
    tool: str = ""
    action: str = ""
    state: str = ""
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    error: str = ""
    event_id: str = ""
    # Filled by the store when appended (time defaults to now).
    sequence: int = 0
    time: datetime | None = None


@dataclass
class SearchResult:
    record: HistoryRecord
    snippet: str


@dataclass
class NoteRecord:
    namespace: str
    key: str
    value: str
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _aware(value: datetime) -> datetime:
    # SQLite hands timestamps back naive; they were stored as UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def make_snippet(text: str, query: str, radius: int = SNIPPET_RADIUS) -> str:
    """A one-line excerpt of `text` around the first case-insensitive match of `query`."""
    at = text.lower().find(query.lower())
    if at < 0:
        return ""
    start = max(0, at - radius)
    end = min(len(text), at + len(query) + radius)
    excerpt = text[start:end].replace("\r", " ").replace("\n", " ")
    return ("…" if start > 0 else "") + excerpt + ("…" if end < len(text) else "")


def _row_to_record(row: object) -> HistoryRecord:
    m = row._mapping  # type: ignore[attr-defined]
    return HistoryRecord(
        task_id=m["task_id"],
        sequence=m["sequence"],
        time=_aware(m["time"]),
        kind=m["kind"],
        step_index=m["step_index"],
        tool=m["tool"],
        action=m["action"],
        state=m["state"],
        exit_code=m["exit_code"],
        stdout=m["stdout"],
        stderr=m["stderr"],
        error=m["error"],
        event_id=m["event_id"] or "",
    )


def _repeats_an_id(records: Sequence[HistoryRecord]) -> bool:
    """Whether two of the records carry one event id (only the careful append dedupes them)."""
    ids = [record.event_id for record in records if record.event_id]
    return len(set(ids)) != len(ids)


def _row(task_id: str, sequence: int, record: HistoryRecord, now: datetime) -> dict[str, object]:
    return {
        "task_id": task_id,
        "sequence": sequence,
        "time": record.time or now,
        "kind": record.kind,
        "step_index": record.step_index,
        "tool": record.tool,
        "action": _output(record.action),
        "state": record.state,
        "exit_code": record.exit_code,
        "stdout": _output(record.stdout),
        "stderr": _output(record.stderr),
        "error": _output(record.error),
        "event_id": record.event_id or None,
    }


def _numbered(
    task_id: str, records: Sequence[HistoryRecord], last: int, known: dict[str, int]
) -> tuple[list[int], list[dict[str, object]]]:
    """Each record's sequence, numbering on from `last`, and the rows to insert. A record whose
    event id is in `known` (stored under that sequence) keeps its number and is not stored
    again, and so does a second copy of one within `records`."""
    now = datetime.now(UTC)
    known = dict(known)
    sequences: list[int] = []
    rows = []
    next_sequence = last + 1
    for record in records:
        if record.event_id in known:
            sequences.append(known[record.event_id])
            continue
        if record.event_id:
            known[record.event_id] = next_sequence
        sequences.append(next_sequence)
        next_sequence += 1
        rows.append(_row(task_id, sequences[-1], record, now))
    return sequences, rows


# Built once: SqliteWriter compiles each statement once.
INSERT_HISTORY = history_events.insert()
_sqlite_time = SqliteWriter.converter(history_events.c.time)


def _for_sqlite(row: dict[str, object]) -> dict[str, object]:
    """A row as the engine would store it on SQLite (its time in SQLAlchemy's text form)."""
    return {**row, "time": _sqlite_time(row["time"])}


def _require(value: str, name: str, max_length: int | None = None) -> None:
    if not value.strip():
        raise InvalidArgument(f"{name} must not be empty")
    _check_text(value, name, max_length)


def _check_text(value: str, name: str, max_length: int | None = None) -> None:
    # Same answer on every database: PostgreSQL refuses NUL in text and enforces column
    # lengths, where SQLite would silently accept both.
    if "\0" in value:
        raise InvalidArgument(f"{name} must not contain NUL characters")
    if max_length is not None and len(value) > max_length:
        raise InvalidArgument(f"{name} is longer than {max_length} characters")


def _output(text: str) -> str:
    """Program output may hold NUL bytes; PostgreSQL text cannot, so they become U+FFFD."""
    return text.replace("\0", "\ufffd")


class MemoryStore:
    """History events per task and key/value notes per namespace."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # One lock per task: appends to a task are serialized so sequences stay 1, 2, 3...
        self._task_locks: dict[str, asyncio.Lock] = {}
        # Each task's last stored sequence, as this process last committed or read it.
        self._last: OrderedDict[str, int] = OrderedDict()
        # On a SQLite file, appends take a direct sqlite3 connection (corral.db.SqliteWriter).
        self._direct = SqliteWriter.of(engine)

    @classmethod
    async def open(cls, database_url: str) -> MemoryStore:
        engine = create_engine(database_url)  # WAL + busy timeout on SQLite; makes parent dirs
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.run_sync(add_missing_columns, metadata)
            await conn.run_sync(lambda sync: history_event_ids.create(sync, checkfirst=True))
        return cls(engine)

    async def close(self) -> None:
        if self._direct is not None:
            await self._direct.close()
        await self._engine.dispose()

    # --- history ------------------------------------------------------------------------

    async def append_events(self, task_id: str, records: Sequence[HistoryRecord]) -> list[int]:
        _require(task_id, "task_id", TASK_ID_MAX)
        for record in records:
            if record.task_id and record.task_id != task_id:
                raise InvalidArgument(f"event for task {record.task_id!r} in a request for task {task_id!r}")
            _check_text(record.tool, "tool", SHORT_TEXT_MAX)
            _check_text(record.state, "state", SHORT_TEXT_MAX)
            _check_text(record.event_id, "event_id", EVENT_ID_MAX)
        if not records:
            return []
        lock = self._task_locks.setdefault(task_id, asyncio.Lock())
        async with lock:
            if task_id in self._last and not _repeats_an_id(records):
                with contextlib.suppress(IntegrityError):  # memory did not know: the careful way
                    return await self._append_known(task_id, records, self._last[task_id])
                self._last.pop(task_id, None)
            for attempt in range(APPEND_RETRIES):
                try:
                    return await self._append_locked(task_id, records)
                except IntegrityError:
                    if attempt == APPEND_RETRIES - 1:
                        raise
        raise AssertionError("unreachable")

    async def _append_known(self, task_id: str, records: Sequence[HistoryRecord], last: int) -> list[int]:
        """The records numbered on from `last` in one INSERT (IntegrityError: a number or an
        event id is stored already)."""
        sequences, rows = _numbered(task_id, records, last, {})
        if self._direct is not None:
            sql, _ = self._direct.sql(INSERT_HISTORY, rows[0])
            sqlite_rows = [_for_sqlite(row) for row in rows]
            await self._direct.transaction(lambda conn: conn.executemany(sql, sqlite_rows))
        else:
            async with self._engine.begin() as conn:
                await conn.execute(history_events.insert(), rows)
        self._remember(task_id, sequences[-1])
        return sequences

    def _remember(self, task_id: str, last: int) -> None:
        self._last[task_id] = last
        self._last.move_to_end(task_id)
        while len(self._last) > KNOWN_SEQUENCES:
            self._last.popitem(last=False)

    async def remove_finished_before(self, before: datetime, batch: int = 500) -> int:
        """Removes the history of tasks that finished (a task_finished record) and recorded
        nothing since `before`, `batch` tasks at a time; how many tasks. A task still running
        has no task_finished record, or a later record, and keeps its history."""
        removed = 0
        while True:
            finished = func.sum(case((history_events.c.kind == HISTORY_KIND_TASK_FINISHED, 1), else_=0))
            query = (
                select(history_events.c.task_id)
                .group_by(history_events.c.task_id)
                .having(and_(func.max(history_events.c.time) < before, finished > 0))
                .limit(batch)
            )
            async with self._engine.begin() as conn:
                ids = list((await conn.scalars(query)).all())
                if not ids:
                    return removed
                await conn.execute(delete(history_events).where(history_events.c.task_id.in_(ids)))
            for task_id in ids:
                self._task_locks.pop(task_id, None)
                self._last.pop(task_id, None)
            removed += len(ids)

    async def _append_locked(self, task_id: str, records: Sequence[HistoryRecord]) -> list[int]:
        if self._direct is not None:
            return await self._append_locked_direct(task_id, records)
        async with self._engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Serializes appends to one task across processes (memory replicas) until
                # commit, so the max+1 below never races; SQLite has one writer anyway.
                await conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(task_id))))
            last = await conn.scalar(
                select(func.coalesce(func.max(history_events.c.sequence), 0)).where(
                    history_events.c.task_id == task_id
                )
            )
            # A redelivered event keeps the sequence it was stored under (and so does a second
            # copy of one within this request).
            ids = {record.event_id for record in records if record.event_id}
            known: dict[str, int] = {}
            if ids:
                stored = await conn.execute(
                    select(history_events.c.event_id, history_events.c.sequence).where(
                        history_events.c.task_id == task_id, history_events.c.event_id.in_(ids)
                    )
                )
                known = {row.event_id: row.sequence for row in stored}
            sequences, rows = _numbered(task_id, records, int(last or 0), known)
            if rows:
                await conn.execute(history_events.insert(), rows)
        self._remember(task_id, max(int(last or 0), *sequences))
        return sequences

    async def _append_locked_direct(self, task_id: str, records: Sequence[HistoryRecord]) -> list[int]:
        """_append_locked on a SQLite file, in one transaction on the direct connection (its
        BEGIN IMMEDIATE orders appends across processes, as the advisory lock on PostgreSQL)."""
        assert self._direct is not None
        ids = sorted({record.event_id for record in records if record.event_id})

        def append(conn: sqlite3.Connection) -> tuple[int, list[int]]:
            [last] = conn.execute(
                "SELECT coalesce(max(sequence), 0) FROM history_events WHERE task_id = ?", (task_id,)
            ).fetchone()
            known: dict[str, int] = {}
            if ids:
                marks = ", ".join("?" * len(ids))
                known = dict(conn.execute(
                    "SELECT event_id, sequence FROM history_events "
                    f"WHERE task_id = ? AND event_id IN ({marks})",  # (only `?` marks are formatted in)
                    (task_id, *ids),
                ).fetchall())
            sequences, rows = _numbered(task_id, records, int(last), known)
            if rows:
                conn.executemany(sql_of(rows[0]), [_for_sqlite(row) for row in rows])
            return int(last), sequences

        def sql_of(row: dict[str, object]) -> str:
            assert self._direct is not None
            return self._direct.sql(INSERT_HISTORY, row)[0]

        last, sequences = await self._direct.transaction(append)
        self._remember(task_id, max(last, *sequences))
        return sequences

    async def has_finished(self, task_id: str) -> bool:
        """Whether the task's history holds its final entry (task_finished)."""
        _require(task_id, "task_id")
        query = select(history_events.c.id).where(
            history_events.c.task_id == task_id, history_events.c.kind == HISTORY_KIND_TASK_FINISHED
        ).limit(1)
        async with self._engine.connect() as conn:
            return await conn.scalar(query) is not None

    async def list_events(self, task_id: str, after_sequence: int = 0, limit: int = 0) -> list[HistoryRecord]:
        _require(task_id, "task_id")
        if after_sequence < 0:
            raise InvalidArgument("after_sequence must not be negative")
        if limit < 0:
            raise InvalidArgument("limit must not be negative")
        limit = min(limit or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)
        query = (
            select(history_events)
            .where(history_events.c.task_id == task_id)
            .where(history_events.c.sequence > after_sequence)
            .order_by(history_events.c.sequence)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            result = await conn.execute(query)
            return [_row_to_record(row) for row in result]

    async def search(self, query: str, limit: int = 0, task_id: str = "") -> list[SearchResult]:
        """Case-insensitive substring search over actions and outputs, newest first."""
        _require(query, "query", MAX_SEARCH_QUERY_CHARS)
        _check_text(task_id, "task_id")
        if limit < 0:
            raise InvalidArgument("limit must not be negative")
        limit = min(limit or DEFAULT_SEARCH_LIMIT, MAX_SEARCH_LIMIT)
        pattern = f"%{_escape_like(query.lower())}%"
        matches = or_(
            *(func.lower(history_events.c[name]).like(pattern, escape="\\") for name in SEARCHABLE_COLUMNS)
        )
        statement = select(history_events).where(matches)
        if task_id:
            statement = statement.where(history_events.c.task_id == task_id)
        statement = statement.order_by(history_events.c.time.desc(), history_events.c.id.desc()).limit(limit)
        async with self._engine.connect() as conn:
            result = await conn.execute(statement)
            records = [_row_to_record(row) for row in result]
        hits = []
        for record in records:
            snippet = ""
            for name in SEARCHABLE_COLUMNS:
                snippet = make_snippet(getattr(record, name), query)
                if snippet:
                    break
            hits.append(SearchResult(record=record, snippet=snippet))
        return hits

    # --- notes --------------------------------------------------------------------------

    async def put_note(self, namespace: str, key: str, value: str) -> NoteRecord:
        _require(namespace, "namespace", NAMESPACE_MAX)
        _require(key, "key", KEY_MAX)
        _check_text(value, "value")
        now = datetime.now(UTC)
        # Update-then-insert keeps it portable (no dialect-specific upsert); a concurrent
        # insert of the same key loses on the unique constraint and retries as an update.
        for attempt in range(APPEND_RETRIES):
            try:
                async with self._engine.begin() as conn:
                    updated = await conn.execute(
                        notes.update()
                        .where(notes.c.namespace == namespace, notes.c.key == key)
                        .values(value=value, updated_at=now)
                    )
                    if updated.rowcount == 0:
                        await conn.execute(
                            notes.insert().values(namespace=namespace, key=key, value=value, updated_at=now)
                        )
                return NoteRecord(namespace=namespace, key=key, value=value, updated_at=now)
            except IntegrityError:
                if attempt == APPEND_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    async def get_note(self, namespace: str, key: str) -> NoteRecord:
        _require(namespace, "namespace")
        _require(key, "key")
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(notes).where(notes.c.namespace == namespace, notes.c.key == key))
            ).first()
        if row is None:
            raise NotFound(f"no note {key!r} in namespace {namespace!r}")
        m = row._mapping
        return NoteRecord(
            namespace=m["namespace"],
            key=m["key"],
            value=m["value"],
            updated_at=_aware(m["updated_at"]),
        )

    async def list_notes(self, namespace: str) -> list[NoteRecord]:
        _require(namespace, "namespace")
        async with self._engine.connect() as conn:
            result = await conn.execute(
                select(notes).where(notes.c.namespace == namespace).order_by(notes.c.key)
            )
            return [
                NoteRecord(
                    namespace=r._mapping["namespace"],
                    key=r._mapping["key"],
                    value=r._mapping["value"],
                    updated_at=_aware(r._mapping["updated_at"]),
                )
                for r in result
            ]
