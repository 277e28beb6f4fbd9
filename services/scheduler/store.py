"""Persistence of tasks, their step results and their event log (SQLAlchemy, async).

Protos are stored serialized (spec, step results, events): the proto is the schema of record,
and the columns beside it are what queries filter and sort on.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

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
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from corral.api_keys import LOCAL_TENANT
from corral.db import add_missing_columns, is_sqlite
from corral.output_preview import drop_outputs, within_budget
from corral.schema import TERMINAL_TASK_STATES
from corral.steps import step_tool
from corral.v1 import task_pb2

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


class TaskStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        # SQLite allows one writer at a time; queueing writes here avoids "database is locked".
        self._write_lock = asyncio.Lock() if is_sqlite(engine) else None
        # Run first in every write transaction; raises to refuse it (scheduler replicas: a
        # deposed leader's writes, services/scheduler/leadership.py). None: no check.
        self.fence: Callable[[AsyncSession], Awaitable[None]] | None = None

    async def create_tables(self) -> None:
        async with self._engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
            await conn.run_sync(add_missing_columns, Base.metadata)

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncSession]:
        if self._write_lock is None:
            async with self._sessions.begin() as session:
                if self.fence is not None:
                    await self.fence(session)
                yield session
            return
        async with self._write_lock, self._sessions.begin() as session:
            if self.fence is not None:
                await self.fence(session)
            yield session

    async def create(
        self,
        task_id: str,
        spec: task_pb2.TaskSpec,
        tenant_id: str = LOCAL_TENANT,
        also: Callable[[AsyncSession], Awaitable[None]] | None = None,
    ) -> task_pb2.Task:
        """Stores a new scheduled task; returns it as stored (no second read needed). `also`
        writes more in the same transaction (the task's idempotency key)."""
        row = TaskRow(
            task_id=task_id,
            tenant_id=tenant_id,
            state=task_pb2.TASK_STATE_SCHEDULED,
            spec=spec.SerializeToString(),
            created_at=time.time(),
            executor_id="",
            error="",
            task_dir="",
            host_task_dir="",
            last_sequence=0,
            assigned_to="",
            epoch=0,
        )
        steps = [
            StepRow(
                task_id=task_id,
                index=index,
                result=task_pb2.StepResult(
                    index=index, tool=step_tool(step), state=task_pb2.STEP_STATE_PENDING
                ).SerializeToString(),
            )
            for index, step in enumerate(spec.steps)
        ]
        async with self._writing() as session:
            session.add(row)
            # The task row first: there is no ORM relationship to order the inserts, and
            # PostgreSQL (unlike SQLite by default) enforces the steps' foreign key.
            await session.flush()
            session.add_all(steps)
            if also is not None:
                await also(session)
        return self._to_proto(row, steps)

    async def get(self, task_id: str) -> task_pb2.Task | None:
        if "\0" in task_id:
            return None  # no id has one, and PostgreSQL refuses it in a query
        async with self._sessions() as session:
            row = await session.get(TaskRow, task_id)
            if row is None:
                return None
            steps = (
                await session.scalars(
                    select(StepRow).where(StepRow.task_id == task_id).order_by(StepRow.index)
                )
            ).all()
        task = self._to_proto(row, list(steps))
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
            task = self._to_proto(row, by_task.get(row.task_id, []))
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
        async with self._sessions() as session:
            rows = await session.scalars(
                select(TaskRow.task_id)
                .where(TaskRow.state == task_pb2.TASK_STATE_SCHEDULED, TaskRow.assigned_to == "")
                .order_by(TaskRow.created_at)
                .limit(limit)
            )
            return list(rows.all())

    async def assign(self, task_id: str, executor_id: str) -> int | None:
        """Records the task's assignment to `executor_id` under a new epoch (None: it is no
        longer scheduled and unassigned, e.g. cancelled meanwhile)."""
        async with self._writing() as session:
            result = await session.execute(
                update(TaskRow)
                .where(
                    TaskRow.task_id == task_id,
                    TaskRow.state == task_pb2.TASK_STATE_SCHEDULED,
                    TaskRow.assigned_to == "",
                )
                .values(assigned_to=_text(executor_id), epoch=TaskRow.epoch + 1)
            )
            if not getattr(result, "rowcount", 0):
                return None
            return int(await session.scalar(select(TaskRow.epoch).where(TaskRow.task_id == task_id)) or 0)

    async def unassign(self, task_id: str) -> None:
        """Back in the queue: the executor never started the task (a later one gets a higher epoch)."""
        async with self._writing() as session:
            await session.execute(
                update(TaskRow)
                .where(TaskRow.task_id == task_id, TaskRow.state == task_pb2.TASK_STATE_SCHEDULED)
                .values(assigned_to="")
            )

    async def assigned_unfinished(self) -> list[tuple[str, str, int, int]]:
        """(task id, executor id, epoch, state) of every unfinished assigned task."""
        async with self._sessions() as session:
            rows = await session.execute(
                select(TaskRow.task_id, TaskRow.assigned_to, TaskRow.epoch, TaskRow.state).where(
                    TaskRow.state.not_in(TERMINAL_TASK_STATES), TaskRow.assigned_to != ""
                )
            )
            return [(r.task_id, r.assigned_to, int(r.epoch), int(r.state)) for r in rows.all()]

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
        async with self._sessions() as session:
            state = await session.scalar(select(TaskRow.state).where(TaskRow.task_id == task_id))
            return None if state is None else int(state)

    async def state_and_spec(self, task_id: str) -> tuple[int, task_pb2.TaskSpec] | None:
        async with self._sessions() as session:
            row = (
                await session.execute(select(TaskRow.state, TaskRow.spec).where(TaskRow.task_id == task_id))
            ).first()
        if row is None:
            return None
        spec = task_pb2.TaskSpec()
        spec.ParseFromString(row.spec)
        return row.state, spec

    async def finish_if_not_terminal(
        self, task_id: str, state: task_pb2.TaskState.ValueType, error: str
    ) -> bool:
        """Moves a task to a terminal state unless it is in one already; True if it moved.
        Its pending/running steps are closed in the same transaction (a reader never sees an
        ended task with a step still running)."""
        step_state = (
            task_pb2.STEP_STATE_CANCELLED if state == task_pb2.TASK_STATE_CANCELLED else task_pb2.STEP_STATE_FAILED
        )
        async with self._writing() as session:
            result = await session.execute(
                update(TaskRow)
                .where(TaskRow.task_id == task_id, TaskRow.state.not_in(TERMINAL_TASK_STATES))
                .values(state=state, error=_text(error), finished_at=time.time())
            )
            moved = bool(getattr(result, "rowcount", 0))
            if moved:
                await _close_unfinished_steps(session, task_id, step_state, error)
            return moved

    async def mark_running(self, task_id: str, **values: object) -> None:
        """The executor started the task (no effect once the task has ended)."""
        async with self._writing() as session:
            values = {name: _text(value) for name, value in values.items()}
            await session.execute(
                update(TaskRow)
                .where(TaskRow.task_id == task_id, TaskRow.state.not_in(TERMINAL_TASK_STATES))
                .values(state=task_pb2.TASK_STATE_RUNNING, **values)
            )

    async def save_step(self, task_id: str, result: task_pb2.StepResult) -> None:
        """A step's progress or result (no effect once the task has ended, whose unfinished
        steps finish_if_not_terminal closed)."""
        still_open = (
            select(TaskRow.task_id)
            .where(TaskRow.task_id == task_id, TaskRow.state.not_in(TERMINAL_TASK_STATES))
            .exists()
        )
        async with self._writing() as session:
            await session.execute(
                update(StepRow)
                .where(StepRow.task_id == task_id, StepRow.index == result.index, still_open)
                .values(result=result.SerializeToString())
            )

    async def insert_events(self, events: list[task_pb2.TaskEvent], sources: list[int] | None = None) -> None:
        """Stores numbered events (one transaction) and advances each task's last sequence;
        `sources`: each event's number from its executor (0: none)."""
        last: dict[str, int] = {}
        numbers = sources or [0] * len(events)
        async with self._writing() as session:
            session.add_all(
                EventRow(task_id=e.task_id, sequence=e.sequence, event=e.SerializeToString(), source_sequence=n)
                for e, n in zip(events, numbers, strict=True)
            )
            for event in events:
                last[event.task_id] = max(last.get(event.task_id, 0), event.sequence)
            for task_id, sequence in last.items():
                await session.execute(
                    update(TaskRow)
                    .where(TaskRow.task_id == task_id, TaskRow.last_sequence < sequence)
                    .values(last_sequence=sequence)
                )

    async def recently_ended(self, since: float) -> list[tuple[str, int, str, bytes]]:
        """(task id, state, error, its last stored event) of each task that ended since `since`."""
        async with self._sessions() as session:
            rows = await session.execute(
                select(TaskRow.task_id, TaskRow.state, TaskRow.error, EventRow.event)
                .join(EventRow, and_(EventRow.task_id == TaskRow.task_id, EventRow.sequence == TaskRow.last_sequence))
                .where(TaskRow.state.in_(TERMINAL_TASK_STATES), TaskRow.finished_at >= since)
            )
            return [(r.task_id, int(r.state), r.error, r.event) for r in rows.all()]

    async def last_sequence(self, task_id: str) -> int:
        async with self._sessions() as session:
            value = await session.scalar(select(TaskRow.last_sequence).where(TaskRow.task_id == task_id))
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
        async with self._sessions() as session:
            return int(
                await session.scalar(
                    select(func.count())
                    .select_from(TaskRow)
                    .where(TaskRow.tenant_id == tenant_id, TaskRow.state.not_in(TERMINAL_TASK_STATES))
                )
                or 0
            )

    async def remove_finished_before(self, cutoff: float, batch: int = 500) -> int:
        """Removes tasks that ended before `cutoff` (epoch seconds), with their steps and
        events, `batch` at a time; how many. Unfinished tasks are never touched."""
        removed = 0
        while True:
            async with self._writing() as session:
                ids = list(
                    (
                        await session.scalars(
                            select(TaskRow.task_id)
                            .where(TaskRow.state.in_(TERMINAL_TASK_STATES), TaskRow.finished_at < cutoff)
                            .limit(batch)
                        )
                    ).all()
                )
                if not ids:
                    return removed
                # Explicitly, children first: SQLite enforces no foreign keys (no cascade).
                await session.execute(delete(EventRow).where(EventRow.task_id.in_(ids)))
                await session.execute(delete(StepRow).where(StepRow.task_id.in_(ids)))
                await session.execute(
                    delete(TaskRow).where(TaskRow.task_id.in_(ids), TaskRow.state.in_(TERMINAL_TASK_STATES))
                )
            removed += len(ids)

    async def set_finished_at(self, task_id: str, finished_at: float) -> None:
        """For tests and tools: when the task ended."""
        async with self._writing() as session:
            await session.execute(update(TaskRow).where(TaskRow.task_id == task_id).values(finished_at=finished_at))

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


async def _close_unfinished_steps(
    session: AsyncSession, task_id: str, state: task_pb2.StepState.ValueType, error: str
) -> None:
    rows = (await session.scalars(select(StepRow).where(StepRow.task_id == task_id))).all()
    for row in rows:
        result = task_pb2.StepResult()
        result.ParseFromString(row.result)
        if result.state in (task_pb2.STEP_STATE_PENDING, task_pb2.STEP_STATE_RUNNING):
            was_running = result.state == task_pb2.STEP_STATE_RUNNING
            result.state = state if was_running else task_pb2.STEP_STATE_SKIPPED
            result.error = error if was_running else "skipped: the task ended before this step"
            row.result = result.SerializeToString()
