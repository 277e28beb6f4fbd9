"""Tasks, their step results and their event log: held in memory, written in group commits.

Protos are stored serialized (spec, step results, events): the proto is the schema of record,
and the columns beside it are what queries filter and sort on.

The scheduler is the only writer of its tables (one per deployment: the leader), so what it
wrote is what it can keep: every unfinished task (`load()` at start, then each `create`), and
the most recently finished ones, are held in memory as the `Task` a reader gets. The dispatch
and watch paths (state, spec, queue, assignment, the tenant's unfinished count) read only
memory; a task not held (finished a while ago, or never loaded) is read from the database.

Every write goes through one place, `_GroupCommit` (`_write()`): a write is queued, and one
writer runs everything queued meanwhile in ONE transaction (group commit), in queue order, so
concurrent submits, assignments and event batches share a commit. A caller's await returns
only once its write is committed (a submit is acknowledged only with its row on disk). Memory
is decided first (synchronously, so concurrent callers see each decision at once), then the
write is queued with the same conditions in SQL; where a write fails, an assignment or an end
is undone in memory and the error raised. If one write of a batch raises (an idempotency key
stored meanwhile), the batch is rolled back and each write retried in its own transaction, so
only that caller sees the error. A check every write must pass (a leader's fence) belongs in
`_GroupCommit._commit`, the one transaction helper. On a SQLite file (one scheduler, no lease,
no fence) a batch of statements runs there as plain SQL on a direct sqlite3 connection
(corral.db.SqliteWriter): one thread hop a transaction instead of a dozen through aiosqlite.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import sqlite3
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import (
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import Executable

from corral.api_keys import LOCAL_TENANT
from corral.db import SqliteWriter, add_missing_columns
from corral.output_preview import drop_outputs, within_budget
from corral.schema import TERMINAL_TASK_STATES
from corral.steps import step_tool
from corral.v1 import task_pb2

# Finished tasks kept in memory (a client's GetTask right after the end reads no database),
# at most this many and this many bytes (a task's step results carry output previews).
RECENT_FINISHED = 1024
RECENT_FINISHED_BYTES = 32 * 1024 * 1024
# Writes one transaction carries at most (the rest go in the next one).
MAX_GROUP = 1000

T = TypeVar("T")

@dataclass
class _Sql:
    """One prepared statement's parameter rows, touching the rows of `task_ids`."""

    statement: Executable
    rows: list[dict[str, Any]]
    task_ids: tuple[str, ...]


# A write: statements, or a function of the session (what needs the ORM or a result).
Write = list[_Sql] | Callable[[AsyncSession], Awaitable[Any]]
# A check run first in every write transaction, raising to refuse it (TaskStore.fence).
Fence = Callable[[AsyncSession], Awaitable[None]]

# Bytes of tasks one listing page carries at most (specs can be large): the page ends early,
# its next_page_token going on from there.
LIST_PAGE_BYTES = 16 * 1024 * 1024


class Base(DeclarativeBase):
    pass


class TaskRow(Base):
    __tablename__ = "scheduler_tasks"

    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[int] = mapped_column(Integer, index=True)
    spec: Mapped[bytes] = mapped_column(LargeBinary)
    # Text, not String(n): PostgreSQL enforces lengths (SQLite does not), and the id comes
    # from the executor's configuration.
    executor_id: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Double, index=True)
    started_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    task_dir: Mapped[str] = mapped_column(Text, default="")
    host_task_dir: Mapped[str] = mapped_column(Text, default="")
    last_sequence: Mapped[int] = mapped_column(Integer, default=0)
    # The owner (corral.api_keys); rows from before tenants belong to the local tenant.
    tenant_id: Mapped[str] = mapped_column(Text, index=True, server_default=LOCAL_TENANT)
    # The executor the task is assigned to ("": none), recorded before RunTask is sent, and the
    # assignment's epoch: grows with each assignment; the executor refuses an older one.
    assigned_to: Mapped[str] = mapped_column(Text, default="", server_default="")
    epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class StepRow(Base):
    __tablename__ = "scheduler_steps"

    task_id: Mapped[str] = mapped_column(
        ForeignKey("scheduler_tasks.task_id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    result: Mapped[bytes] = mapped_column(LargeBinary)


class EventRow(Base):
    __tablename__ = "scheduler_events"
    __table_args__ = (Index("ix_scheduler_events_task_seq", "task_id", "sequence", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("scheduler_tasks.task_id", ondelete="CASCADE"))
    sequence: Mapped[int] = mapped_column(Integer)
    event: Mapped[bytes] = mapped_column(LargeBinary)
    # The executor's number for the event (0: the scheduler's own): where a restarted
    # scheduler resumes the executor's stream (AttachTask).
    source_sequence: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


def _text(value: object) -> object:
    """PostgreSQL text cannot hold NUL characters (SQLite can): stored as U+FFFD instead."""
    return value.replace("\0", "\ufffd") if isinstance(value, str) else value


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def encode_page_token(created_at: float, task_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at!r}|{task_id}".encode()).decode()


def decode_page_token(token: str) -> tuple[float, str]:
    """Raises ValueError on a token this service did not make."""
    raw = base64.urlsafe_b64decode(token.encode()).decode()
    created, _, task_id = raw.partition("|")
    if not task_id or "\0" in task_id:
        raise ValueError("malformed page token")
    return float(created), task_id


TASKS = Base.metadata.tables["scheduler_tasks"]
STEPS = Base.metadata.tables["scheduler_steps"]
EVENTS = Base.metadata.tables["scheduler_events"]
# Statements built once (building one costs more than running it), run with executemany.
_TASK = TASKS.c.task_id == bindparam("b_task")
# Literal numbers, not an expanding parameter: the statement compiles once to plain SQL
# (TaskStore's direct SQLite writes run it as text).
_OPEN = TASKS.c.state.not_in([literal_column(str(int(state))) for state in TERMINAL_TASK_STATES])
_SCHEDULED = TASKS.c.state == task_pb2.TASK_STATE_SCHEDULED
INSERT_TASK = insert(TASKS)
INSERT_STEPS = insert(STEPS)
INSERT_EVENTS = insert(EVENTS)
ASSIGN = update(TASKS).where(_TASK, _SCHEDULED).values(assigned_to=bindparam("b_to"), epoch=bindparam("b_epoch"))
UNASSIGN = update(TASKS).where(_TASK, _SCHEDULED).values(assigned_to="")
FINISH = update(TASKS).where(_TASK, _OPEN).values(
    state=bindparam("b_state"), error=bindparam("b_error"), finished_at=bindparam("b_finished")
)
SET_FINISHED_AT = update(TASKS).where(_TASK).values(finished_at=bindparam("b_finished"))
SAVE_STEP = update(STEPS).where(
    STEPS.c.task_id == bindparam("b_task"), STEPS.c.index == bindparam("b_index")
).values(result=bindparam("b_result"))
_MARK_RUNNING: dict[tuple[str, ...], Executable] = {}


def _mark_running(columns: tuple[str, ...]) -> Executable:
    statement = _MARK_RUNNING.get(columns)
    if statement is None:
        values: dict[str, Any] = {name: bindparam(f"b_{name}") for name in columns}
        statement = _MARK_RUNNING[columns] = (
            update(TASKS).where(_TASK, _OPEN).values(state=task_pb2.TASK_STATE_RUNNING, **values)
        )
    return statement


class _GroupCommit:
    """The one writer of the task tables: writes queued while a transaction runs share the
    next one (in queue order); each caller's await returns once its own write is committed."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], direct: SqliteWriter | None) -> None:
        self._sessions = sessions
        self._direct = direct  # (a SQLite file: statement-only batches go this way)
        # Each write, what to do in memory once it is committed, and its caller's future.
        self._queue: list[tuple[Write, Callable[[Any], None] | None, asyncio.Future[Any]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.fence: Fence | None = None  # (TaskStore.fence)

    async def run(self, write: Write, committed: Callable[[Any], None] | None = None) -> Any:
        """`write`'s result once committed; `committed` runs then, even if the caller is gone."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((write, committed, future))
        if self._writer is None:
            self._writer = loop.create_task(self._drain(), name="task-store-writer")
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[Write, Callable[[Any], None] | None, asyncio.Future[Any]]] = []
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
                try:
                    results = await self._commit([write for write, _, _ in batch])
                except Exception as exc:
                    if len(batch) == 1:
                        _settle(batch[0], error=exc)
                        continue
                    # One write spoiled the batch: each alone, so only its caller sees its error.
                    for entry in batch:
                        try:
                            [result] = await self._commit([entry[0]])
                        except Exception as alone:
                            _settle(entry, error=alone)
                        else:
                            _settle(entry, result)
                    continue
                for entry, result in zip(batch, results, strict=True):
                    _settle(entry, result)
            batch = []
        except BaseException:  # cancelled (the loop is closing): no caller may wait forever
            for _, _, future in batch + self._queue:
                future.cancel()
            self._queue = []
            raise
        finally:
            self._writer = None

    async def _commit(self, writes: list[Write]) -> list[Any]:
        """One transaction running `writes` in order: the one place every write goes through.
        Statements of consecutive writes run together (executemany) where that keeps each
        task's rows written in order; a function is a barrier."""
        if self._direct is not None and self.fence is None and not any(callable(write) for write in writes):
            return await self._commit_direct(writes)
        results: list[Any] = []
        async with self._sessions.begin() as session:
            if self.fence is not None:
                await self.fence(session)
            conn = await session.connection()
            plan = _Plan()
            for write in writes:
                if callable(write):
                    await plan.run(conn)
                    plan = _Plan()
                    results.append(await write(session))
                else:
                    plan.add(write)  # (run at the next barrier or the end)
                    results.append(None)
            await plan.run(conn)
        return results

    async def _commit_direct(self, writes: list[Write]) -> list[Any]:
        """`_commit` on a SQLite file (no fence there: no lease): the same statements in the
        same order, as plain SQL on the direct connection, in one thread hop."""
        assert self._direct is not None
        plan = _Plan()
        for write in writes:
            plan.add(write)  # type: ignore[arg-type]  # (statements only: checked by the caller)
        runs = []
        for statement, rows in plan.groups:
            sql, constants = self._direct.sql(statement, rows[0])
            runs.append((sql, [{**constants, **row} for row in rows] if constants else rows))

        def run(connection: sqlite3.Connection) -> None:
            for sql, rows in runs:
                connection.executemany(sql, rows)

        await self._direct.transaction(run)
        return [None] * len(writes)


class _Plan:
    """Statements grouped for executemany: each joins the last group of its statement unless
    a later group touches one of its tasks (their order is kept), else starts a group."""

    def __init__(self) -> None:
        self._groups: list[tuple[Executable, list[dict[str, Any]]]] = []
        self._last_touch: dict[str, int] = {}
        self._last_of: dict[int, int] = {}

    def add(self, statements: list[_Sql]) -> None:
        for sql in statements:
            at = self._last_of.get(id(sql.statement))
            if at is not None and all(self._last_touch.get(t, -1) <= at for t in sql.task_ids):
                self._groups[at][1].extend(sql.rows)
            else:
                self._groups.append((sql.statement, list(sql.rows)))
                at = self._last_of[id(sql.statement)] = len(self._groups) - 1
            for task_id in sql.task_ids:
                self._last_touch[task_id] = at

    @property
    def groups(self) -> list[tuple[Executable, list[dict[str, Any]]]]:
        return self._groups

    async def run(self, conn: AsyncConnection) -> None:
        for statement, rows in self._groups:
            await conn.execute(statement, rows)


def _settle(
    entry: tuple[Write, Callable[[Any], None] | None, asyncio.Future[Any]],
    result: Any = None,
    error: BaseException | None = None,
) -> None:
    _, committed, future = entry
    if error is None and committed is not None:
        committed(result)
    if future.done():
        return  # its caller was cancelled
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


@dataclass
class _Held:
    """A task in memory: what GetTask answers, and the assignment beside it."""

    task: task_pb2.Task
    created_at: float
    assigned_to: str = ""
    epoch: int = 0
    size: int = 0  # its bytes, while among the recently finished


class TaskStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._direct = SqliteWriter.of(engine)
        self._writes = _GroupCommit(self._sessions, self._direct)
        self._held: dict[str, _Held] = {}  # every unfinished task
        self._recent: OrderedDict[str, _Held] = OrderedDict()  # finished ones, oldest first
        self._recent_bytes = 0
        self._queued: dict[str, None] = {}  # scheduled and unassigned, oldest first
        self._unfinished: Counter[str] = Counter()  # by tenant

    @property
    def fence(self) -> Fence | None:
        """Run first in every write transaction; raises to refuse it (scheduler replicas: a
        deposed leader's writes, services/scheduler/leadership.py). None: no check."""
        return self._writes.fence

    @fence.setter
    def fence(self, fence: Fence | None) -> None:
        self._writes.fence = fence

    @property
    def direct_writer(self) -> SqliteWriter | None:
        """The direct SQLite connections' writer (None: every write takes the engine)."""
        return self._direct

    async def close(self) -> None:
        """Closes the direct SQLite connection, if any (the engine is its owner's to dispose)."""
        if self._direct is not None:
            await self._direct.close()

    async def create_tables(self) -> None:
        async with self._engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
            await conn.run_sync(add_missing_columns, Base.metadata)

    async def _write(self, write: Write, committed: Callable[[Any], None] | None = None) -> Any:
        """Every write to the task tables: committed (in a shared transaction) on return."""
        return await self._writes.run(write, committed)

    async def load(self) -> None:
        """Holds every unfinished task in memory (at start, before any dispatch)."""
        unfinished = TaskRow.state.not_in(TERMINAL_TASK_STATES)
        async with self._sessions() as session:
            rows = (await session.scalars(select(TaskRow).where(unfinished).order_by(TaskRow.created_at))).all()
            steps = (
                await session.scalars(
                    select(StepRow)
                    .where(StepRow.task_id.in_(select(TaskRow.task_id).where(unfinished)))
                    .order_by(StepRow.index)
                )
            ).all()
        by_task: dict[str, list[StepRow]] = {}
        for step in steps:
            by_task.setdefault(step.task_id, []).append(step)
        for row in rows:
            if row.task_id not in self._held:
                self._keep(self._held_from(row, by_task.get(row.task_id, [])))

    # --- memory ------------------------------------------------------------------------

    def _held_from(self, row: TaskRow, steps: list[StepRow]) -> _Held:
        return _Held(self._to_proto(row, steps), row.created_at, row.assigned_to, int(row.epoch))

    def _keep(self, held: _Held) -> None:
        task = held.task
        if task.state in TERMINAL_TASK_STATES:
            self._remember_finished(held)
            return
        self._held[task.task_id] = held
        self._unfinished[task.tenant_id] += 1
        if task.state == task_pb2.TASK_STATE_SCHEDULED and not held.assigned_to:
            self._queued[task.task_id] = None

    def _retire(self, held: _Held) -> None:
        """An ended task: out of the unfinished ones, into the recently finished."""
        task_id, tenant = held.task.task_id, held.task.tenant_id
        self._held.pop(task_id, None)
        self._queued.pop(task_id, None)
        self._unfinished[tenant] -= 1
        if self._unfinished[tenant] <= 0:
            del self._unfinished[tenant]
        self._remember_finished(held)

    def _unretire(self, held: _Held) -> None:
        """Undoes _retire (the end's write failed)."""
        if self._recent.pop(held.task.task_id, None) is not None:
            self._recent_bytes -= held.size
        self._keep(held)
        if held.task.task_id in self._queued:
            self._queued = dict(sorted(self._queued.items(), key=lambda item: self._created(item[0])))

    def _remember_finished(self, held: _Held) -> None:
        held.size = held.task.ByteSize()
        self._recent[held.task.task_id] = held
        self._recent_bytes += held.size
        while len(self._recent) > RECENT_FINISHED or (self._recent_bytes > RECENT_FINISHED_BYTES and self._recent):
            _, oldest = self._recent.popitem(last=False)
            self._recent_bytes -= oldest.size

    def _forget(self, task_id: str) -> None:
        held = self._recent.pop(task_id, None)
        if held is not None:
            self._recent_bytes -= held.size

    def _created(self, task_id: str) -> float:
        held = self._held.get(task_id)
        return held.created_at if held is not None else 0.0

    def _find(self, task_id: str) -> _Held | None:
        return self._held.get(task_id) or self._recent.get(task_id)

    async def _lookup(self, task_id: str) -> _Held | None:
        """The task from memory, or else from the database (then kept: it has ended)."""
        held = self._find(task_id)
        if held is not None or "\0" in task_id:
            return held  # (no id has a NUL, and PostgreSQL refuses it in a query)
        async with self._sessions() as session:
            row = await session.get(TaskRow, task_id)
            if row is None:
                return None
            steps = (
                await session.scalars(select(StepRow).where(StepRow.task_id == task_id).order_by(StepRow.index))
            ).all()
        held = self._find(task_id)  # read meanwhile by another caller: one copy of a task
        if held is None:
            held = self._held_from(row, list(steps))
            self._keep(held)
        return held

    # --- tasks -------------------------------------------------------------------------

    async def create(
        self,
        task_id: str,
        spec: task_pb2.TaskSpec,
        tenant_id: str = LOCAL_TENANT,
        also: Callable[[AsyncSession], Awaitable[None]] | None = None,
    ) -> task_pb2.Task:
        """Stores a new scheduled task; returns it once committed. `also` writes more in the
        same transaction (the task's idempotency key)."""
        created_at = time.time()
        task = task_pb2.Task(task_id=task_id, state=task_pb2.TASK_STATE_SCHEDULED, tenant_id=tenant_id, spec=spec)
        task.created_at.FromNanoseconds(int(created_at * 1e9))
        steps = []
        for index, step in enumerate(spec.steps):
            result = task.steps.add(index=index, tool=step_tool(step), state=task_pb2.STEP_STATE_PENDING)
            steps.append({"task_id": task_id, "index": index, "result": result.SerializeToString()})
        row = {
            "task_id": task_id, "tenant_id": tenant_id, "state": task_pb2.TASK_STATE_SCHEDULED,
            "spec": spec.SerializeToString(), "created_at": created_at, "executor_id": "", "error": "",
            "task_dir": "", "host_task_dir": "", "last_sequence": 0, "assigned_to": "", "epoch": 0,
        }

        # The task row first: PostgreSQL (unlike SQLite by default) enforces the steps' key.
        statements = [_Sql(INSERT_TASK, [row], (task_id,))]
        if steps:
            statements.append(_Sql(INSERT_STEPS, steps, (task_id,)))
        write: Write = statements
        if also is not None:

            async def write_with_key(session: AsyncSession) -> None:
                for sql in statements:
                    await session.execute(sql.statement, sql.rows)
                await also(session)

            write = write_with_key
        await self._write(write, lambda _: self._keep(_Held(task, created_at)))
        return _copy(task)

    async def get(self, task_id: str) -> task_pb2.Task | None:
        held = await self._lookup(task_id)
        if held is None:
            return None
        task = _copy(held.task)
        within_budget(task)  # one message whatever the steps printed; their outputs are events
        return task

    async def list_tasks(
        self, state: int, page_size: int, page_token: str, tenant_id: str | None = None
    ) -> tuple[list[task_pb2.Task], str]:
        """A page of tasks, newest first; only `tenant_id`'s when given. Their steps carry no
        output (GetTask has previews), and a page ends early rather than pass LIST_PAGE_BYTES."""
        query = select(TaskRow).order_by(TaskRow.created_at.desc(), TaskRow.task_id.desc())
        if tenant_id is not None:
            query = query.where(TaskRow.tenant_id == tenant_id)
        if state:
            query = query.where(TaskRow.state == state)
        if page_token:
            created, task_id = decode_page_token(page_token)
            query = query.where(
                or_(
                    TaskRow.created_at < created,
                    and_(TaskRow.created_at == created, TaskRow.task_id < task_id),
                )
            )
        async with self._sessions() as session:
            rows = list((await session.scalars(query.limit(page_size + 1))).all())
            more = len(rows) > page_size
            rows = rows[:page_size]
            ids = [r.task_id for r in rows]
            step_rows = (
                await session.scalars(
                    select(StepRow).where(StepRow.task_id.in_(ids)).order_by(StepRow.index)
                )
            ).all() if ids else []
        by_task: dict[str, list[StepRow]] = {}
        for step in step_rows:
            by_task.setdefault(step.task_id, []).append(step)
        tasks: list[task_pb2.Task] = []
        size = 0
        for row in rows:
            held = self._find(row.task_id)  # memory may be a step ahead of a progress write
            task = _copy(held.task) if held is not None else self._to_proto(row, by_task.get(row.task_id, []))
            for result in task.steps:
                drop_outputs(result)
            size += task.ByteSize()
            if size > LIST_PAGE_BYTES and tasks:
                more = True
                break
            tasks.append(task)
        last = tasks[-1].task_id if tasks else ""
        created = next((r.created_at for r in rows if r.task_id == last), 0.0)
        token = encode_page_token(created, last) if more and tasks else ""
        return tasks, token

    async def scheduled_task_ids(self, limit: int) -> list[str]:
        """The oldest scheduled, unassigned tasks (memory)."""
        return list(itertools.islice(self._queued, limit))

    async def assign(self, task_id: str, executor_id: str) -> int | None:
        """Records the task's assignment to `executor_id` under a new epoch (None: it is no
        longer scheduled and unassigned, e.g. cancelled meanwhile)."""
        held = self._held.get(task_id)
        if held is None or held.task.state != task_pb2.TASK_STATE_SCHEDULED or held.assigned_to:
            return None
        executor_id = str(_text(executor_id))
        held.assigned_to = executor_id
        held.epoch += 1
        epoch = held.epoch
        self._queued.pop(task_id, None)

        try:
            await self._write([_Sql(ASSIGN, [{"b_task": task_id, "b_to": executor_id, "b_epoch": epoch}], (task_id,))])
        except Exception:
            if held.assigned_to == executor_id and held.epoch == epoch:  # not stored: not assigned
                held.assigned_to = ""
                if held.task.state == task_pb2.TASK_STATE_SCHEDULED:
                    self._requeue(task_id)
            raise
        return epoch

    def _requeue(self, task_id: str) -> None:
        self._queued[task_id] = None
        self._queued = dict(sorted(self._queued.items(), key=lambda item: self._created(item[0])))

    async def unassign(self, task_id: str) -> None:
        """Back in the queue: the executor never started the task (a later one gets a higher epoch)."""
        held = self._held.get(task_id)
        if held is None or held.task.state != task_pb2.TASK_STATE_SCHEDULED:
            return
        held.assigned_to = ""
        self._requeue(task_id)

        await self._write([_Sql(UNASSIGN, [{"b_task": task_id}], (task_id,))])

    async def assigned_unfinished(self) -> list[tuple[str, str, int, int]]:
        """(task id, executor id, epoch, state) of every unfinished assigned task (after load())."""
        return [
            (task_id, held.assigned_to, held.epoch, int(held.task.state))
            for task_id, held in self._held.items()
            if held.assigned_to
        ]

    async def last_source_sequence(self, task_id: str) -> int:
        """The last executor event of the task stored (its executor's numbering)."""
        async with self._sessions() as session:
            value = await session.scalar(
                select(func.max(EventRow.source_sequence)).where(EventRow.task_id == task_id)
            )
            return int(value or 0)

    async def task_ids_in_state(self, state: int) -> list[str]:
        async with self._sessions() as session:
            rows = await session.scalars(select(TaskRow.task_id).where(TaskRow.state == state))
            return list(rows.all())

    async def state(self, task_id: str) -> int | None:
        held = await self._lookup(task_id)
        return None if held is None else int(held.task.state)

    async def state_and_spec(self, task_id: str) -> tuple[int, task_pb2.TaskSpec] | None:
        """The task's state and its spec (memory's own: not to be changed)."""
        held = await self._lookup(task_id)
        return None if held is None else (int(held.task.state), held.task.spec)

    async def finish_if_not_terminal(
        self, task_id: str, state: task_pb2.TaskState.ValueType, error: str
    ) -> bool:
        """Moves a task to a terminal state unless it is in one already; True if it moved.
        Its pending/running steps are closed in the same transaction (a reader never sees an
        ended task with a step still running)."""
        held = await self._lookup(task_id)
        if held is None or held.task.state in TERMINAL_TASK_STATES:
            return False
        step_state = (
            task_pb2.STEP_STATE_CANCELLED if state == task_pb2.TASK_STATE_CANCELLED else task_pb2.STEP_STATE_FAILED
        )
        before = _copy(held.task)
        error = str(_text(error))
        finished_at = time.time()
        held.task.state = state
        held.task.error = error
        held.task.finished_at.FromNanoseconds(int(finished_at * 1e9))
        closed = _close_unfinished_steps(held.task, step_state, error)
        self._retire(held)

        write = [_Sql(FINISH, [{"b_task": task_id, "b_state": state, "b_error": error, "b_finished": finished_at}], (task_id,))]
        if closed:
            rows = [{"b_task": task_id, "b_index": index, "b_result": raw} for index, raw in closed]
            write.append(_Sql(SAVE_STEP, rows, (task_id,)))
        try:
            await self._write(write)
        except Exception:
            held.task = before
            self._unretire(held)
            raise
        return True

    async def mark_running(self, task_id: str, **values: object) -> None:
        """The executor started the task (no effect once the task has ended)."""
        held = self._held.get(task_id)
        if held is None:
            return  # ended (every unfinished task is held)
        values = {name: _text(value) for name, value in values.items()}
        task = held.task
        task.state = task_pb2.TASK_STATE_RUNNING
        self._queued.pop(task_id, None)
        if isinstance(values.get("executor_id"), str):
            task.executor_id = str(values["executor_id"])
        if isinstance(values.get("task_dir"), str) and values["task_dir"]:
            task.task_dir = str(values["task_dir"])
            task.log_path = f"{task.task_dir}/agent.log"
        started_at = values.get("started_at")
        if isinstance(started_at, float):
            task.started_at.FromNanoseconds(int(started_at * 1e9))

        columns = tuple(sorted(values))
        row = {"b_task": task_id, **{f"b_{name}": values[name] for name in columns}}
        await self._write([_Sql(_mark_running(columns), [row], (task_id,))])

    async def save_step(self, task_id: str, result: task_pb2.StepResult) -> None:
        """A step's progress or result (no effect once the task has ended, whose unfinished
        steps finish_if_not_terminal closed)."""
        held = self._held.get(task_id)
        if held is None or not 0 <= result.index < len(held.task.steps):
            return
        held.task.steps[result.index].CopyFrom(result)
        raw = result.SerializeToString()

        # Queued before the task's end, if any (writes commit in order): no state check.
        await self._write([_Sql(SAVE_STEP, [{"b_task": task_id, "b_index": result.index, "b_result": raw}], (task_id,))])

    async def insert_events(self, events: list[task_pb2.TaskEvent], sources: list[int] | None = None) -> None:
        """Stores numbered events (one executemany, in a shared transaction); `sources`: each
        event's number from its executor (0: none). A task's last sequence is its greatest."""
        numbers = sources or [0] * len(events)
        rows = [
            {"task_id": e.task_id, "sequence": e.sequence, "event": e.SerializeToString(), "source_sequence": n}
            for e, n in zip(events, numbers, strict=True)
        ]
        if not rows:
            return

        # After each task's own row (PostgreSQL checks the key): the tasks are named.
        await self._write([_Sql(INSERT_EVENTS, rows, tuple({e.task_id: None for e in events}))])

    async def recently_ended(self, since: float) -> list[tuple[str, int, str, bytes]]:
        """(task id, state, error, its last stored event) of each task that ended since `since`."""
        ended = (
            select(TaskRow.task_id, TaskRow.state, TaskRow.error, func.max(EventRow.sequence).label("last"))
            .join(EventRow, EventRow.task_id == TaskRow.task_id)
            .where(TaskRow.state.in_(TERMINAL_TASK_STATES), TaskRow.finished_at >= since)
            .group_by(TaskRow.task_id, TaskRow.state, TaskRow.error)
            .subquery()
        )
        async with self._sessions() as session:
            rows = await session.execute(
                select(ended.c.task_id, ended.c.state, ended.c.error, EventRow.event).join(
                    EventRow, and_(EventRow.task_id == ended.c.task_id, EventRow.sequence == ended.c.last)
                )
            )
            return [(r.task_id, int(r.state), r.error, r.event) for r in rows.all()]

    async def last_sequence(self, task_id: str) -> int:
        async with self._sessions() as session:
            value = await session.scalar(select(func.max(EventRow.sequence)).where(EventRow.task_id == task_id))
            return int(value or 0)

    async def events_after(
        self, task_id: str, after: int, limit: int = 500, max_bytes: int | None = None
    ) -> list[task_pb2.TaskEvent]:
        """Up to `limit` events after sequence `after`; with `max_bytes`, only as many as fit
        in it (at least one), so that a page of large output events stays bounded."""
        newer = and_(EventRow.task_id == task_id, EventRow.sequence > after)
        async with self._sessions() as session:
            if max_bytes is not None:
                sizes = await session.scalars(
                    select(func.length(EventRow.event)).where(newer).order_by(EventRow.sequence).limit(limit)
                )
                total = 0
                for count, size in enumerate(sizes.all()):
                    total += int(size or 0)
                    if total > max_bytes and count:
                        limit = count
                        break
            rows = await session.scalars(
                select(EventRow.event).where(newer).order_by(EventRow.sequence).limit(limit)
            )
            events = []
            for raw in rows.all():
                event = task_pb2.TaskEvent()
                event.ParseFromString(raw)
                events.append(event)
            return events

    async def count_by_state(self) -> dict[int, int]:
        """How many stored tasks are in each state (the scheduler's /metrics)."""
        async with self._sessions() as session:
            rows = await session.execute(select(TaskRow.state, func.count()).group_by(TaskRow.state))
            return {int(state): int(count) for state, count in rows.all()}

    async def count_unfinished(self, tenant_id: str) -> int:
        """The tenant's scheduled and running tasks (its concurrent-task quota counts these)."""
        return self._unfinished[tenant_id]

    async def remove_finished_before(self, cutoff: float, batch: int = 500) -> int:
        """Removes tasks that ended before `cutoff` (epoch seconds), with their steps and
        events, `batch` at a time; how many. Unfinished tasks are never touched."""
        removed = 0

        async def write(session: AsyncSession) -> list[str]:
            ids = list(
                (
                    await session.scalars(
                        select(TaskRow.task_id)
                        .where(TaskRow.state.in_(TERMINAL_TASK_STATES), TaskRow.finished_at < cutoff)
                        .limit(batch)
                    )
                ).all()
            )
            if ids:
                # Explicitly, children first: SQLite enforces no foreign keys (no cascade).
                await session.execute(delete(EventRow).where(EventRow.task_id.in_(ids)))
                await session.execute(delete(StepRow).where(StepRow.task_id.in_(ids)))
                await session.execute(
                    delete(TaskRow).where(TaskRow.task_id.in_(ids), TaskRow.state.in_(TERMINAL_TASK_STATES))
                )
            return ids

        while True:
            ids = await self._write(write)
            if not ids:
                return removed
            for task_id in ids:
                self._forget(task_id)
            removed += len(ids)

    async def set_finished_at(self, task_id: str, finished_at: float) -> None:
        """For tests and tools: when the task ended."""
        held = self._find(task_id)
        if held is not None:
            held.task.finished_at.FromNanoseconds(int(finished_at * 1e9))

        await self._write([_Sql(SET_FINISHED_AT, [{"b_task": task_id, "b_finished": finished_at}], (task_id,))])

    async def count_events(self, task_id: str) -> int:
        async with self._sessions() as session:
            query = select(func.count()).select_from(EventRow).where(EventRow.task_id == task_id)
            return int(await session.scalar(query) or 0)

    async def count(self) -> int:
        async with self._sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(TaskRow)) or 0)

    @staticmethod
    def _to_proto(row: TaskRow, steps: list[StepRow]) -> task_pb2.Task:
        task = task_pb2.Task(
            task_id=row.task_id,
            state=task_pb2.TaskState.ValueType(row.state),
            executor_id=row.executor_id,
            error=row.error,
            task_dir=row.task_dir,
            tenant_id=row.tenant_id,
        )
        task.spec.ParseFromString(row.spec)
        if row.task_dir:
            task.log_path = f"{row.task_dir}/agent.log"
        for field, value in (
            ("created_at", row.created_at),
            ("started_at", row.started_at),
            ("finished_at", row.finished_at),
        ):
            ts = _timestamp(value)
            if ts is not None:
                getattr(task, field).CopyFrom(ts)
        for step in steps:
            task.steps.add().ParseFromString(step.result)
        return task


def _copy(task: task_pb2.Task) -> task_pb2.Task:
    copy = task_pb2.Task()
    copy.CopyFrom(task)
    return copy


def _close_unfinished_steps(
    task: task_pb2.Task, state: task_pb2.StepState.ValueType, error: str
) -> list[tuple[int, bytes]]:
    """Ends the task's pending/running steps (in memory); (index, result) of each changed."""
    closed = []
    for result in task.steps:
        if result.state in (task_pb2.STEP_STATE_PENDING, task_pb2.STEP_STATE_RUNNING):
            was_running = result.state == task_pb2.STEP_STATE_RUNNING
            result.state = state if was_running else task_pb2.STEP_STATE_SKIPPED
            result.error = error if was_running else "skipped: the task ended before this step"
            closed.append((result.index, result.SerializeToString()))
    return closed
