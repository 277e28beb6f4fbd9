"""A run outlives the stream that started it (the local driver, the real agent): a reader that
goes away leaves the task running; attaching again gets the rest of its events once; with no
reader past the orphan grace it is cancelled; epochs fence stale assignments."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral.config import Settings
from corral.schema import TaskRequest
from corral.v1 import task_pb2
from services.executor.drivers.local import LocalDriver
from services.executor.errors import AlreadyRunning, StaleAssignment, TaskNotHeld
from services.executor.runner import TaskRunner

pytestmark = pytest.mark.timeout(60)


def make_runner(tmp_path: Path, grace: float = 60) -> TaskRunner:
    settings = Settings(data_dir=tmp_path, executor_orphan_grace_seconds=grace)
    return TaskRunner(settings, LocalDriver(settings), executor_id="unit")


def spec(*commands: str) -> task_pb2.TaskSpec:
    return TaskRequest.model_validate({"steps": [{"tool": "shell", "command": c} for c in commands]}).to_proto()


async def test_a_run_whose_reader_left_goes_on_and_is_taken_back(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    run = runner.start("orphan", spec("echo one", "sleep 0.5; echo two"), epoch=3)
    first: list[task_pb2.TaskEvent] = []
    async for event in run.events():
        first.append(event)
        if event.HasField("step_started"):
            break  # the scheduler went away
    assert run.worker is not None
    await asyncio.wait_for(asyncio.shield(run.worker), 20)  # it went on alone, to its end
    assert run.ended
    [held] = runner.held_tasks()
    assert (held.task_id, held.epoch, held.finished) == ("orphan", 3, True)
    assert runner.running_task_ids == []  # its slot is free; its events are not
    with pytest.raises(StaleAssignment):
        runner.attach("orphan", 2)
    with pytest.raises(StaleAssignment):
        runner.start("orphan", spec("true"), epoch=2)
    with pytest.raises(AlreadyRunning):
        runner.start("orphan", spec("true"), epoch=3)
    rest = [e async for e in runner.attach("orphan", 3).events(first[-1].sequence)]
    events = first + rest
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert sum(e.HasField("started") for e in events) == 1
    assert events[-1].finished.state == task_pb2.TASK_STATE_COMPLETED
    # All read, yet kept (on disk) for the grace: a scheduler killed before storing them asks again.
    [held] = runner.held_tasks()
    assert (held.last_sequence, held.finished) == (events[-1].sequence, True)
    again = [e async for e in runner.attach("orphan", 3).events(events[-3].sequence)]
    assert [e.sequence for e in again] == [events[-2].sequence, events[-1].sequence]
    runner.drop("orphan", "the scheduler has it all")
    assert runner.held_tasks() == []
    with pytest.raises(TaskNotHeld):
        runner.attach("orphan", 3)


async def test_a_run_nobody_takes_back_is_cancelled_after_the_grace(tmp_path: Path) -> None:
    runner = make_runner(tmp_path, grace=0.5)
    run = runner.start("abandoned", spec("sleep 30"), epoch=1)
    async for event in run.events():
        if event.HasField("step_started"):
            break
    assert run.worker is not None
    await asyncio.wait_for(asyncio.shield(run.worker), 20)
    finished = [e for e in run.buffer.read(0, limit=100) if e.HasField("finished")]
    assert runner.held_tasks() == [] and runner.running_task_ids == []
    assert finished == [] or finished[0].finished.state == task_pb2.TASK_STATE_CANCELLED
    assert run.recorder is not None and run.cancel_reason == "no scheduler took the task back within 0.5s of losing it"
