"""The step loop's policy, against the real in-sandbox agent under the unisolated local driver.

Skip after failure, continue_on_error, timeouts and cancellation are the executor's rules, the
same for every driver; isolation itself is tested by the driver suites in tests/integration.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from corral.config import Settings
from corral.schema import TaskRequest
from corral.v1 import task_pb2
from services.executor.drivers.local import LocalDriver
from services.executor.runner import TaskRun, TaskRunner

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def runner(tmp_path: Path) -> TaskRunner:
    settings = Settings(data_dir=tmp_path, step_timeout_seconds=20)
    return TaskRunner(settings, LocalDriver(settings), executor_id="unit")


async def collect(run: TaskRun) -> list[task_pb2.TaskEvent]:
    return [event async for event in run.events()]


async def run_task(runner: TaskRunner, *steps: dict[str, Any], **task: Any) -> tuple[str, list[task_pb2.StepResult], task_pb2.TaskFinished]:
    task_id = f"t{len(runner.running_task_ids)}-{id(steps)}"
    spec = TaskRequest.model_validate({"steps": list(steps), **task}).to_proto()
    events = await collect(runner.start(task_id, spec))
    results = [e.step_finished.result for e in events if e.HasField("step_finished")]
    finished = [e.finished for e in events if e.HasField("finished")]
    assert len(finished) == 1 and events[-1].HasField("finished")
    return task_id, results, finished[0]


def states(results: list[task_pb2.StepResult]) -> list[str]:
    return [task_pb2.StepState.Name(r.state) for r in results]


async def test_a_failed_step_skips_the_rest(runner: TaskRunner) -> None:
    _, results, finished = await run_task(
        runner,
        {"tool": "shell", "command": "echo one"},
        {"tool": "shell", "command": "exit 3"},
        {"tool": "shell", "command": "echo never"},
    )
    assert states(results) == ["STEP_STATE_COMPLETED", "STEP_STATE_FAILED", "STEP_STATE_SKIPPED"]
    assert results[0].stdout == "one\n"
    assert results[1].exit_code == 3 and results[1].error == "exited with code 3"
    assert results[2].error == "skipped: step 2 failed"
    assert finished.state == task_pb2.TASK_STATE_FAILED
    assert finished.error == "step 2 (shell) failed: exited with code 3"


async def test_continue_on_error_runs_the_next_steps(runner: TaskRunner) -> None:
    _, results, finished = await run_task(
        runner,
        {"tool": "read_file", "path": "../outside", "continue_on_error": True},
        {"tool": "python", "code": "print('after')"},
    )
    assert states(results) == ["STEP_STATE_FAILED", "STEP_STATE_COMPLETED"]
    assert "'..' is not allowed" in results[0].error
    assert results[1].stdout == "after\n"
    assert finished.state == task_pb2.TASK_STATE_COMPLETED


async def test_timeouts_step_then_task_then_default(runner: TaskRunner) -> None:
    _, results, finished = await run_task(
        runner,
        {"tool": "shell", "command": "sleep 30", "timeout": 0.3},
        {"tool": "shell", "command": "echo skipped"},
    )
    assert results[0].timed_out and "timed out after 0.3s" in results[0].error
    assert states(results)[1] == "STEP_STATE_SKIPPED"
    assert finished.state == task_pb2.TASK_STATE_FAILED
    _, results, _ = await run_task(runner, {"tool": "python", "code": "import time; time.sleep(30)"}, step_timeout=0.4)
    assert results[0].timed_out and "after 0.4s" in results[0].error


async def test_cancel_stops_the_running_step_and_skips_the_rest(runner: TaskRunner) -> None:
    spec = TaskRequest.model_validate(
        {"steps": [{"tool": "shell", "command": "echo started; sleep 30"}, {"tool": "shell", "command": "true"}]}
    ).to_proto()
    run = runner.start("cancel-me", spec)
    events: list[task_pb2.TaskEvent] = []

    async def watch() -> None:
        async for event in run.events():
            events.append(event)
            if event.HasField("output"):
                runner.cancel("cancel-me", "the user asked")

    await asyncio.wait_for(watch(), 20)
    results = [e.step_finished.result for e in events if e.HasField("step_finished")]
    assert states(results) == ["STEP_STATE_CANCELLED", "STEP_STATE_SKIPPED"]
    assert results[0].error == "cancelled: the user asked"
    assert results[1].error == "skipped: the task was cancelled: the user asked"
    assert events[-1].finished.state == task_pb2.TASK_STATE_CANCELLED
    assert runner.running_task_ids == []


async def test_file_steps_and_the_journal(runner: TaskRunner) -> None:
    task_id, results, finished = await run_task(
        runner,
        {"tool": "write_file", "path": "sub/a.txt", "content": "hello"},
        {"tool": "read_file", "path": "sub/a.txt"},
    )
    assert finished.state == task_pb2.TASK_STATE_COMPLETED, finished.error
    assert results[0].stdout.startswith("wrote 5 bytes to ") and results[1].stdout == "hello"
    task_dir = runner.settings.tasks_dir / task_id
    memory = json.loads((task_dir / "memory.json").read_text())
    assert [(e["tool"], e["status"]) for e in memory] == [("write_file", "completed"), ("read_file", "completed")]
    log = (task_dir / "agent.log").read_text()
    assert "step 1 read_file: read sub/a.txt" in log and "task completed" in log


async def test_events_come_in_order(runner: TaskRunner) -> None:
    spec = TaskRequest.model_validate({"steps": [{"tool": "shell", "command": "echo x"}]}).to_proto()
    kinds = [e.WhichOneof("event") for e in await collect(runner.start("ordered", spec))]
    assert kinds == ["started", "step_started", "output", "step_finished", "finished"]
