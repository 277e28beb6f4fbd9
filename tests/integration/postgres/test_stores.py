"""The scheduler's and memory's stores on PostgreSQL and SQLite: what differs between the two.

PostgreSQL enforces foreign keys, column lengths and real row locks, refuses NUL in text, and
runs concurrent transactions for real; these tests pin the stores' behaviour on each point.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from harness import cluster
from sqlalchemy import update
from sqlalchemy.engine import make_url

from corral.db import create_engine
from corral.errors import IdempotencyKeyReused
from corral.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2
from corral.v1.memory_pb2 import HISTORY_KIND_TASK_FINISHED
from services.memory.store import HistoryRecord, InvalidArgument, MemoryStore
from services.scheduler.idempotency import Claim, IdempotencyKeys, IdempotencyRow
from services.scheduler.store import TaskStore, decode_page_token, encode_page_token


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    return postgres_url


@pytest.fixture
async def task_store(database_url: str) -> AsyncIterator[TaskStore]:
    engine = create_engine(database_url)
    store = TaskStore(engine)
    await store.create_tables()
    yield store
    await engine.dispose()


@pytest.fixture
async def memory_store(database_url: str) -> AsyncIterator[MemoryStore]:
    store = await MemoryStore.open(database_url)
    yield store
    await store.close()


def spec(*commands: str) -> task_pb2.TaskSpec:
    return task_pb2.TaskSpec(steps=[task_pb2.Step(shell=task_pb2.ShellAction(command=c)) for c in commands])


async def test_create_writes_the_task_before_its_steps(task_store: TaskStore) -> None:
    # PostgreSQL checks the steps' foreign key at insert time.
    task_id = uuid.uuid4().hex
    await task_store.create(task_id, spec("echo a", "echo b"))
    task = await task_store.get(task_id)
    assert task is not None and [s.index for s in task.steps] == [0, 1]
    assert task.created_at.ToNanoseconds() > 0


async def test_event_batches_are_stored_in_order_and_advance_the_sequence(task_store: TaskStore) -> None:
    # The scheduler numbers events in memory (one scheduler per deployment) and stores them in
    # batches spanning several tasks; a batch is one transaction.
    ids = [uuid.uuid4().hex for _ in range(2)]
    for task_id in ids:
        await task_store.create(task_id, spec("true"))
    batch = [task_pb2.TaskEvent(task_id=ids[i % 2], sequence=i // 2 + 1) for i in range(60)]
    await task_store.insert_events(batch[:25])
    await task_store.insert_events(batch[25:])
    for task_id in ids:
        assert [e.sequence for e in await task_store.events_after(task_id, 0)] == list(range(1, 31))
        assert await task_store.last_sequence(task_id) == 30
    assert [e.sequence for e in await task_store.events_after(ids[0], 28)] == [29, 30]


async def test_page_tokens_survive_the_float_column(task_store: TaskStore) -> None:
    ids = [uuid.uuid4().hex for _ in range(5)]
    for task_id in ids:
        await task_store.create(task_id, spec("true"))
    seen: list[str] = []
    token = ""
    while True:
        page, token = await task_store.list_tasks(0, 2, token)
        seen += [t.task_id for t in page]
        if not token:
            break
        assert decode_page_token(token)[1] == seen[-1]
    assert seen == list(reversed(ids))


async def test_nul_in_a_task_id_or_token_is_not_found_not_a_database_error(task_store: TaskStore) -> None:
    assert await task_store.get("a\0b") is None
    with pytest.raises(ValueError):
        decode_page_token(encode_page_token(1.5, "a\0b"))


async def test_errors_with_nul_are_stored(task_store: TaskStore) -> None:
    task_id = uuid.uuid4().hex
    await task_store.create(task_id, spec("true"))
    assert await task_store.finish_if_not_terminal(task_id, task_pb2.TASK_STATE_FAILED, "bad\0byte")
    task = await task_store.get(task_id)
    assert task is not None and task.error == "bad\ufffdbyte"


async def test_output_with_nul_is_kept_with_a_replacement_character(memory_store: MemoryStore) -> None:
    await memory_store.append_events("t", [HistoryRecord(task_id="t", kind=2, stdout="a\0b", stderr="\0")])
    [record] = await memory_store.list_events("t")
    assert record.stdout == "a\ufffdb" and record.stderr == "\ufffd"
    assert record.time is not None and record.time.tzinfo is not None
    assert record.time.utcoffset() == UTC.utcoffset(None)


async def test_values_the_database_would_refuse_are_invalid_arguments(memory_store: MemoryStore) -> None:
    cases = [
        memory_store.append_events("x" * 129, [HistoryRecord(task_id="", kind=1)]),
        memory_store.append_events("t", [HistoryRecord(task_id="t", kind=1, tool="t" * 33)]),
        memory_store.append_events("t\0", [HistoryRecord(task_id="", kind=1)]),
        memory_store.put_note("ns", "k", "v\0"),
        memory_store.put_note("n" * 257, "k", "v"),
        memory_store.put_note("ns", "k" * 513, "v"),
        memory_store.search("a\0"),
        memory_store.search("a" * 60_000),
        memory_store.list_events("t\0"),
    ]
    for call in cases:
        with pytest.raises(InvalidArgument):
            await call


async def test_two_stores_appending_to_one_task_never_collide(postgres_url: str) -> None:
    # Memory replicas share a PostgreSQL database (SQLite: one memory process per file).
    first, second = await MemoryStore.open(postgres_url), await MemoryStore.open(postgres_url)
    try:
        replies = await asyncio.gather(
            *(
                (first if i % 2 else second).append_events(
                    "shared", [HistoryRecord(task_id="shared", kind=1, action=f"a{i}")] * 3
                )
                for i in range(40)
            )
        )
        assert sorted(seq for reply in replies for seq in reply) == list(range(1, 121))
        assert [r.sequence for r in await first.list_events("shared")] == list(range(1, 121))
    finally:
        await first.close()
        await second.close()


async def test_history_and_notes_survive_reopening(memory_store: MemoryStore, database_url: str) -> None:
    await memory_store.append_events("t", [HistoryRecord(task_id="t", kind=1, action="echo 100%_done")])
    await memory_store.put_note("ns", "k", "v")
    await memory_store.close()
    reopened = await MemoryStore.open(database_url)
    try:
        [hit] = await reopened.search("100%_")
        assert hit.record.action == "echo 100%_done" and "100%_done" in hit.snippet
        assert (await reopened.get_note("ns", "k")).value == "v"
    finally:
        await reopened.close()


def test_services_store_in_postgresql_not_in_sqlite(tmp_path: Path, postgres_url: str) -> None:
    with cluster(tmp_path, "memory", "scheduler") as c, c.channel(c.scheduler_address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        task_id = stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec("echo hi"))).task_id

    async def stored() -> tuple[int, list[str]]:
        dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn)
        try:
            count = await conn.fetchval("SELECT count(*) FROM scheduler_tasks WHERE task_id = $1", task_id)
            tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return int(count), sorted(r["tablename"] for r in tables)
        finally:
            await conn.close()

    count, tables = asyncio.run(stored())
    assert count == 1
    assert {"scheduler_tasks", "scheduler_events", "history_events", "notes"} <= set(tables)
    assert not list(tmp_path.glob("*.db"))


def test_old_scheduler_tables_get_the_tenant_column_on_postgres(postgres_url: str) -> None:
    pytest.register_assert_rewrite("unit")
    from unit.test_tenant_columns import assert_old_tables_migrate

    assert_old_tables_migrate(postgres_url)


# --- retention and idempotency keys (services/scheduler/retention.py, idempotency.py) -------


async def test_the_sweep_removes_old_finished_tasks_and_keeps_unfinished_ones(task_store: TaskStore) -> None:
    old_done, new_done, old_running, old_queued = (uuid.uuid4().hex for _ in range(4))
    for task_id in (old_done, new_done, old_running, old_queued):
        await task_store.create(task_id, spec("true"))
        await task_store.insert_events([task_pb2.TaskEvent(task_id=task_id, sequence=1)])
    for task_id in (old_done, new_done):
        assert await task_store.finish_if_not_terminal(task_id, task_pb2.TASK_STATE_COMPLETED, "")
    await task_store.mark_running(old_running)
    a_week_ago = time.time() - 7 * 24 * 3600
    for task_id in (old_done, old_running, old_queued):
        await task_store.set_finished_at(task_id, a_week_ago)  # (a finished_at on unfinished ones too)
    assert await task_store.remove_finished_before(time.time() - 3600) == 1
    assert await task_store.get(old_done) is None and await task_store.count_events(old_done) == 0
    for kept in (new_done, old_running, old_queued):
        assert await task_store.get(kept) is not None and await task_store.count_events(kept) == 1


async def test_idempotency_keys_expire_and_are_swept(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await TaskStore(engine).create_tables()
        keys = IdempotencyKeys(engine, lifetime_seconds=24 * 3600)
        old = Claim.of("t", "old-key", "SubmitTask", spec("true"))
        fresh = Claim.of("t", "fresh-key", "SubmitTask", spec("true"))
        assert await keys.acquire(old, 0, 0) is None and await keys.acquire(fresh, 0, 0) is None
        await keys.fulfil(old, "task-1")
        await keys.fulfil(fresh, "task-2")
        assert await keys.earlier(old) == "task-1"
        async with engine.begin() as conn:  # the old key was used 25 hours ago
            await conn.execute(
                update(IdempotencyRow).where(IdempotencyRow.key == "old-key").values(created_at=time.time() - 25 * 3600)
            )
        assert await keys.earlier(old) is None  # expired: the key is new again
        assert await keys.sweep(time.time()) == 1
        assert await keys.count() == 1 and await keys.earlier(fresh) == "task-2"
        # The same tenant's key with another request is refused; another tenant's is its own.
        with pytest.raises(IdempotencyKeyReused):
            await keys.earlier(Claim.of("t", "fresh-key", "SubmitTask", spec("false")))
        assert await keys.earlier(Claim.of("u", "fresh-key", "SubmitTask", spec("false"))) is None
    finally:
        await engine.dispose()


async def test_memory_removes_the_history_of_tasks_finished_before_the_cutoff(memory_store: MemoryStore) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=8)
    finished = HISTORY_KIND_TASK_FINISHED
    await memory_store.append_events("old-done", [HistoryRecord("old-done", 1, time=long_ago), HistoryRecord("old-done", finished, time=long_ago)])
    await memory_store.append_events("old-running", [HistoryRecord("old-running", 1, time=long_ago)])
    await memory_store.append_events("new-done", [HistoryRecord("new-done", 1), HistoryRecord("new-done", finished)])
    assert await memory_store.remove_finished_before(datetime.now(UTC) - timedelta(days=7)) == 1
    assert await memory_store.list_events("old-done") == []
    assert len(await memory_store.list_events("old-running")) == 1
    assert len(await memory_store.list_events("new-done")) == 2
