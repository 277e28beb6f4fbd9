"""Timeouts, continue_on_error, background processes, cancellation, teardown."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from corral.internal.v1 import executor_pb2

from .conftest import ExecutorClient, ExecutorFactory, grpc_code, host_processes_matching, spec


def marker() -> str:
    """A sleep duration unique to this test, to find its processes on the host."""
    return str(random.randint(100_000, 999_999))


async def test_step_timeout_kills_the_process_tree(executor: ExecutorClient) -> None:
    m = marker()
    _, outcome = await executor.run_steps(
        [
            {"tool": "shell", "command": f"sleep {m} & sleep {m}; echo never", "timeout": 1,
             "continue_on_error": True},
            {"tool": "shell", "command": f"ps -eo args | grep -c '^sleep {m}' || true"},
            {"tool": "shell", "command": "sleep 100", "timeout": 0.5},
            {"tool": "shell", "command": "echo skipped"},
        ]
    )
    first = outcome.step(0)
    assert first.timed_out and outcome.step_state(0) == "STEP_STATE_FAILED"
    assert first.error.startswith("timed out after 1s")
    assert "never" not in first.stdout
    assert outcome.step(1).stdout.strip() == "0"  # nothing of the timed-out step is left
    assert outcome.step(2).timed_out
    assert outcome.step_state(3) == "STEP_STATE_SKIPPED"
    assert outcome.state == "TASK_STATE_FAILED"
    assert not host_processes_matching(f"sleep {m}")


async def test_task_level_and_default_timeouts(executor_factory: ExecutorFactory) -> None:
    executor = await executor_factory(step_timeout_seconds=1)
    _, outcome = await executor.run_steps([{"tool": "shell", "command": "sleep 60"}])
    assert outcome.step(0).timed_out and "after 1s" in outcome.step(0).error
    _, outcome = await executor.run_steps(
        [{"tool": "python", "code": "import time; time.sleep(60)"}], step_timeout=0.5
    )
    assert outcome.step(0).timed_out and "after 0.5s" in outcome.step(0).error
    # Above the deployment's maximum: refused at admission (as at submission), naming the field.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await executor.run_steps([{"tool": "shell", "command": "true", "timeout": 99999}])
    assert grpc_code(err.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "steps[0].timeout 99999s exceeds this deployment's maximum of 3600s" in (err.value.details() or "")


async def test_continue_on_error_completes_task(executor: ExecutorClient) -> None:
    _, outcome = await executor.run_steps(
        [
            {"tool": "shell", "command": "exit 1", "continue_on_error": True},
            {"tool": "shell", "command": "echo after"},
        ]
    )
    assert outcome.step_state(0) == "STEP_STATE_FAILED"
    assert outcome.step(1).stdout == "after\n"
    assert outcome.state == "TASK_STATE_COMPLETED"


async def test_background_server_persists_then_dies_with_the_task(executor: ExecutorClient) -> None:
    m = marker()
    port = random.randint(20_000, 30_000)
    _, outcome = await executor.run_steps(
        [
            # The backgrounded processes keep the step's stdout open; the step must still end.
            {"tool": "shell", "command": f"sleep {m} & python3 -m http.server {port} --bind 127.0.0.1 &"
             " echo started", "timeout": 20},
            {"tool": "python", "code": (
                "import time, urllib.request\n"
                "for _ in range(100):\n"
                "    try:\n"
                f"        print(urllib.request.urlopen('http://127.0.0.1:{port}/').status); break\n"
                "    except OSError: time.sleep(0.1)\n"
            )},
            {"tool": "shell", "command": f"ps -eo args | grep -c '^sleep {m}'"},
        ]
    )
    assert outcome.state == "TASK_STATE_COMPLETED", outcome.finished
    assert not outcome.step(0).timed_out and outcome.step(0).stdout.startswith("started")
    assert outcome.step(1).stdout == "200\n"
    assert outcome.step(2).stdout == "1\n"
    assert not host_processes_matching(f"sleep {m}")
    assert not host_processes_matching(f"http.server {port}")


async def _first_event_of(call: object, kind: str) -> None:
    async for response in call:  # type: ignore[attr-defined]
        if response.event.WhichOneof("event") == kind:
            return


async def test_cancel_stops_the_running_step(executor: ExecutorClient) -> None:
    task_id = executor.new_task_id()
    m = marker()
    call = executor.stub.RunTask(
        executor_pb2.RunTaskRequest(
            task_id=task_id,
            spec=spec([{"tool": "shell", "command": f"sleep {m} & sleep 30"}, {"tool": "shell", "command": "true"}]),
        )
    )
    events = []
    async for response in call:
        events.append(response.event)
        if response.event.WhichOneof("event") == "step_started":
            reply = await executor.stub.CancelTask(
                executor_pb2.CancelTaskRequest(task_id=task_id, reason="user asked")
            )
            assert reply.found
    results = [e.step_finished.result for e in events if e.WhichOneof("event") == "step_finished"]
    assert results[0].state == 6  # STEP_STATE_CANCELLED
    assert results[0].duration.seconds < 30
    assert results[1].state == 5  # STEP_STATE_SKIPPED
    finished = events[-1].finished
    assert finished.state == 5 and finished.error == "user asked"  # TASK_STATE_CANCELLED
    assert not host_processes_matching(f"sleep {m}")
    missing = await executor.stub.CancelTask(executor_pb2.CancelTaskRequest(task_id="nope"))
    assert not missing.found


async def test_client_going_away_leaves_the_task_running_until_the_grace(executor_factory: ExecutorFactory) -> None:
    """A scheduler that goes away (restart, kill -9) does not take its tasks with it: the task
    goes on, a scheduler resumes its stream (AttachTask) from the last event it had, and only
    a task nobody takes back within the grace is cancelled, its sandbox killed."""
    executor = await executor_factory(executor_orphan_grace_seconds=2)
    m = marker()
    task_id = executor.new_task_id()
    call = executor.stub.RunTask(
        executor_pb2.RunTaskRequest(
            task_id=task_id,
            spec=spec([{"tool": "shell", "command": f"sleep {m} & echo up; sleep 1; echo still"},
                       {"tool": "shell", "command": "sleep 30"}]),
            epoch=7,
        )
    )
    seen = []
    async for response in call:
        seen.append(response.event)
        if response.event.WhichOneof("event") == "output":
            break
    call.cancel()
    # Taken back under its epoch, from the last event seen: the rest, without a repeat.
    attach = executor.stub.AttachTask(
        executor_pb2.AttachTaskRequest(task_id=task_id, epoch=7, after_sequence=seen[-1].sequence)
    )
    async for response in attach:
        seen.append(response.event)
        if response.event.WhichOneof("event") == "step_started" and response.event.step_started.index == 1:
            break
    attach.cancel()
    assert [e.sequence for e in seen] == list(range(1, len(seen) + 1))
    assert "still" in "".join(e.output.data for e in seen if e.HasField("output"))  # it ran on meanwhile
    status = executor_pb2.GetExecutorStatusResponse()
    for _ in range(400):  # nobody takes it back: cancelled after the grace (no assertion on time)
        status = await executor.stub.GetExecutorStatus(executor_pb2.GetExecutorStatusRequest())
        if not status.running_task_ids:
            break
        await asyncio.sleep(0.05)
    assert not status.running_task_ids
    assert not host_processes_matching(f"sleep {m}")
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        async for _ in executor.stub.AttachTask(executor_pb2.AttachTaskRequest(task_id=task_id, epoch=7)):
            pass
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_stopping_the_executor_cancels_running_tasks(executor_factory: ExecutorFactory) -> None:
    executor = await executor_factory()
    m = marker()
    call = executor.stub.RunTask(
        executor_pb2.RunTaskRequest(
            task_id=executor.new_task_id(), spec=spec([{"tool": "shell", "command": f"echo go; sleep {m}"}])
        )
    )
    events = []
    try:
        async for response in call:
            events.append(response.event)
            if response.event.WhichOneof("event") == "output":
                await executor.executor.runner.shutdown()
    except grpc.aio.AioRpcError:
        pass
    assert events[-1].WhichOneof("event") == "finished"
    assert events[-1].finished.state == 5
    assert not host_processes_matching(f"sleep {m}")
