"""The scheduler's TaskStore on a real SQLite file: writes in group commits, state in memory.

Concurrent writers share a transaction, yet each is answered only once its own rows are
committed (a second store opened on the same file, as after a crash, finds every acknowledged
task); one bad write in a batch fails only its caller; a task's rows keep their order when
many tasks' statements are run together.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError

from corral.db import create_engine
from corral.v1 import task_pb2
from services.scheduler.store import TaskStore

pytestmark = pytest.mark.timeout(60)


def spec(*commands: str) -> task_pb2.TaskSpec:
    return task_pb2.TaskSpec(steps=[task_pb2.Step(shell=task_pb2.ShellAction(command=c)) for c in commands])


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[TaskStore]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'tasks.db'}")
    store = TaskStore(engine)
    await store.create_tables()
    await store.load()
    yield store
    await engine.dispose()


async def reopened(store: TaskStore) -> TaskStore:
    """A second store on the same file, as a restarted scheduler has: only what was committed."""
    other = TaskStore(create_engine(str(store.engine.url)))
    await other.load()
    return other


async def test_concurrent_submits_share_commits_and_each_is_stored_when_acknowledged(store: TaskStore) -> None:
    commits = 0

    def count(*_: object) -> None:
        nonlocal commits
        commits += 1

    event.listen(store.engine.sync_engine, "commit", count)
    direct = store.direct_writer  # (on a SQLite file, statement-only writes commit there)
    ids = [uuid.uuid4().hex for _ in range(50)]
    stored: list[str] = []
    other = await reopened(store)

    async def submit(task_id: str) -> None:
        await store.create(task_id, spec("true", "echo b"))
        # Acknowledged: a store that holds nothing of ours in memory finds it on disk.
        found = await other.get(task_id)
        assert found is not None and [s.index for s in found.steps] == [0, 1]
        stored.append(task_id)

    await asyncio.gather(*(submit(task_id) for task_id in ids))
    assert sorted(stored) == sorted(ids)
    assert 0 < commits + (direct.commits if direct else 0) < len(ids)  # they shared transactions
    assert await store.count_unfinished("local") == 50
    assert await store.scheduled_task_ids(100) == ids  # oldest first, from memory
    await other.engine.dispose()


async def test_one_bad_write_in_a_batch_fails_only_its_caller(store: TaskStore) -> None:
    taken = uuid.uuid4().hex
    await store.create(taken, spec("true"))
    fresh = [uuid.uuid4().hex for _ in range(5)]
    results = await asyncio.gather(
        *(store.create(task_id, spec("true")) for task_id in fresh[:2]),
        store.create(taken, spec("true")),  # the same id again: the primary key refuses it
        *(store.create(task_id, spec("true")) for task_id in fresh[2:]),
        return_exceptions=True,
    )
    assert isinstance(results[2], IntegrityError)
    assert [r.task_id for r in results if isinstance(r, task_pb2.Task)] == fresh[:2] + fresh[2:]
    other = await reopened(store)
    for task_id in fresh:
        assert await other.state(task_id) == task_pb2.TASK_STATE_SCHEDULED
    await other.engine.dispose()


async def test_each_tasks_rows_keep_their_order_across_a_shared_batch(store: TaskStore) -> None:
    ids = [uuid.uuid4().hex for _ in range(20)]
    await asyncio.gather(*(store.create(task_id, spec("true", "true")) for task_id in ids))

    async def life(n: int, task_id: str) -> None:
        # Assigned, started, a step done, ended (the odd ones cancelled before starting):
        # queued concurrently with every other task's writes.
        assert await store.assign(task_id, "ex-1") == 1
        if n % 2:
            assert await store.finish_if_not_terminal(task_id, task_pb2.TASK_STATE_CANCELLED, "cancelled")
            await store.mark_running(task_id, executor_id="ex-1")  # too late: no effect
            return
        await store.mark_running(task_id, executor_id="ex-1", task_dir=f"/tasks/{task_id}")
        done = task_pb2.StepResult(index=0, tool="shell", state=task_pb2.STEP_STATE_COMPLETED, exit_code=0)
        await store.save_step(task_id, done)
        assert await store.finish_if_not_terminal(task_id, task_pb2.TASK_STATE_FAILED, "lost")

    await asyncio.gather(*(life(n, task_id) for n, task_id in enumerate(ids)))
    other = await reopened(store)
    assert await other.assigned_unfinished() == []
    for n, task_id in enumerate(ids):
        task = await other.get(task_id)
        assert task is not None and task == await store.get(task_id)  # disk and memory agree
        if n % 2:
            assert task.state == task_pb2.TASK_STATE_CANCELLED and not task.task_dir
            assert [s.state for s in task.steps] == [task_pb2.STEP_STATE_SKIPPED] * 2
        else:
            assert task.state == task_pb2.TASK_STATE_FAILED and task.task_dir == f"/tasks/{task_id}"
            assert [s.state for s in task.steps] == [task_pb2.STEP_STATE_COMPLETED, task_pb2.STEP_STATE_SKIPPED]
    await other.engine.dispose()


async def test_an_assignment_survives_a_restart_and_a_new_one_gets_a_higher_epoch(store: TaskStore) -> None:
    task_id = uuid.uuid4().hex
    await store.create(task_id, spec("true"))
    assert await store.assign(task_id, "ex-1") == 1
    assert await store.assign(task_id, "ex-2") is None  # assigned already
    other = await reopened(store)
    assert await other.assigned_unfinished() == [(task_id, "ex-1", 1, task_pb2.TASK_STATE_SCHEDULED)]
    await other.unassign(task_id)
    assert await other.scheduled_task_ids(10) == [task_id]
    assert await other.assign(task_id, "ex-2") == 2
    await other.engine.dispose()
