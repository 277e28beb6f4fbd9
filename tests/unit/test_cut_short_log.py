"""A scheduler killed between storing a task's end and storing its `finished` event (the event
log is written behind the state): the next scheduler to start adds that event, numbered next,
so the task's log ends as the task did and its watchers stop (a real store on SQLite)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from corral.config import Settings
from corral.db import create_engine
from corral.v1 import task_pb2
from services.scheduler import sandboxes  # noqa: F401 (its table is in the metadata create_tables uses)
from services.scheduler.core import Scheduler
from services.scheduler.store import TaskStore


def test_the_next_scheduler_ends_a_log_cut_short(tmp_path: Path) -> None:
    async def run() -> list[task_pb2.TaskEvent]:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'scheduler.db'}")
        store = TaskStore(engine)
        await store.create_tables()
        spec = task_pb2.TaskSpec(steps=[task_pb2.Step(shell=task_pb2.ShellAction(command="true"))])
        await store.create("t1", spec)
        scheduled = task_pb2.TaskEvent(task_id="t1", sequence=1, scheduled=task_pb2.TaskScheduled())
        await store.insert_events([scheduled])
        # What the killed scheduler got to store: the end, not its event.
        assert await store.finish_if_not_terminal("t1", task_pb2.TASK_STATE_COMPLETED, "")
        scheduler = Scheduler(store, Settings(data_dir=tmp_path))
        await scheduler.start()
        events = [e async for e in scheduler.watch("t1", 0)]
        await scheduler.stop()
        await engine.dispose()
        return events

    events = asyncio.run(run())
    assert [e.sequence for e in events] == [1, 2]
    assert events[-1].finished.state == task_pb2.TASK_STATE_COMPLETED
