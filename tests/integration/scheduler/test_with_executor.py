"""Scheduler and a real executor with real bubblewrap sandboxes: dispatch, queueing, cancel, loss."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from harness import Cluster, cluster, free_port

from corral.internal.v1 import registry_pb2, registry_pb2_grpc
from corral.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2


def shell_spec(*commands: str, timeout: int = 0) -> task_pb2.TaskSpec:
    spec = task_pb2.TaskSpec(steps=[task_pb2.Step(shell=task_pb2.ShellAction(command=c)) for c in commands])
    if timeout:
        spec.step_timeout.seconds = timeout
    return spec


def wait_for_state(
    stub: scheduler_pb2_grpc.SchedulerServiceStub, task_id: str, states: set[int], limit: float = 60
) -> task_pb2.Task:
    deadline = time.monotonic() + limit
    while True:
        task = stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id)).task
        if task.state in states or time.monotonic() > deadline:
            return task
        time.sleep(0.05)


def wait_for_executors(channel: grpc.Channel, count: int) -> None:
    stub = registry_pb2_grpc.ExecutorRegistryServiceStub(channel)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        alive = [e for e in stub.ListExecutors(registry_pb2.ListExecutorsRequest()).executors if e.alive]
        if len(alive) >= count:
            return
        time.sleep(0.1)
    raise TimeoutError("executors did not register")


ENDED = {task_pb2.TASK_STATE_COMPLETED, task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_CANCELLED}


@pytest.fixture
def system(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(tmp_path, "memory", "scheduler", "executor", CORRAL_EXECUTOR_CAPACITY="2") as c:
        yield c


@pytest.fixture
def stub(system: Cluster) -> Iterator[scheduler_pb2_grpc.SchedulerServiceStub]:
    with system.channel(system.scheduler_address) as channel:
        s = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        wait_for_executors(channel, 1)
        yield s


def test_watch_streams_every_event_in_order(
    system: Cluster, stub: scheduler_pb2_grpc.SchedulerServiceStub
) -> None:
    task_id = stub.SubmitTask(
        scheduler_pb2.SubmitTaskRequest(spec=shell_spec("echo one; sleep 0.2; echo two", "echo err >&2"))
    ).task_id
    events = [r.event for r in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task_id), timeout=60)]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "scheduled" and kinds[1] == "started" and kinds[-1] == "finished"
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert kinds.count("step_started") == 2 and kinds.count("step_finished") == 2
    stdout = "".join(e.output.data for e in events if e.HasField("output") and e.output.index == 0)
    assert stdout == "one\ntwo\n"
    stderr = [e.output for e in events if e.HasField("output") and e.output.index == 1]
    assert stderr and stderr[0].stream == task_pb2.OUTPUT_STREAM_STDERR
    assert events[-1].finished.state == task_pb2.TASK_STATE_COMPLETED
    task = stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id)).task
    assert task.state == task_pb2.TASK_STATE_COMPLETED
    assert task.steps[0].stdout == "one\ntwo\n" and task.steps[0].exit_code == 0
    assert task.log_path == f"/tasks/{task_id}/agent.log"
    assert (system.data_dir / "tasks" / task_id / "agent.log").is_file()
    # A late watcher gets the same history.
    replay = [r.event for r in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task_id), timeout=30)]
    assert [e.sequence for e in replay] == [e.sequence for e in events]


def test_tasks_wait_scheduled_while_the_executor_is_full(stub: scheduler_pb2_grpc.SchedulerServiceStub) -> None:
    ids = [
        stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=shell_spec("sleep 2", timeout=30))).task_id
        for _ in range(3)
    ]
    time.sleep(1.0)
    states = [stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=i)).task.state for i in ids]
    assert states.count(task_pb2.TASK_STATE_SCHEDULED) == 1  # capacity is 2
    for task_id in ids:
        assert wait_for_state(stub, task_id, ENDED).state == task_pb2.TASK_STATE_COMPLETED


def test_cancel_stops_the_running_step_at_once(stub: scheduler_pb2_grpc.SchedulerServiceStub) -> None:
    task_id = stub.SubmitTask(
        scheduler_pb2.SubmitTaskRequest(spec=shell_spec("echo started; sleep 60", "echo never", timeout=120))
    ).task_id
    watch = stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task_id), timeout=60)
    for response in watch:
        if response.event.HasField("output"):
            break
    began = time.monotonic()
    task = stub.CancelTask(scheduler_pb2.CancelTaskRequest(task_id=task_id)).task
    took = time.monotonic() - began
    assert task.state == task_pb2.TASK_STATE_CANCELLED, task
    assert took < 10  # far below the 60 s the step would take
    assert task.steps[0].state == task_pb2.STEP_STATE_CANCELLED
    assert task.steps[1].state == task_pb2.STEP_STATE_SKIPPED
    rest = [r.event for r in watch]
    assert rest[-1].finished.state == task_pb2.TASK_STATE_CANCELLED


def _lose_executor(system: Cluster, stub: scheduler_pb2_grpc.SchedulerServiceStub, sig: int) -> task_pb2.Task:
    task_id = stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=shell_spec("sleep 30", timeout=60))).task_id
    deadline = time.monotonic() + 30
    while wait_for_state(stub, task_id, {task_pb2.TASK_STATE_RUNNING}).steps[0].state != task_pb2.STEP_STATE_RUNNING:
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.05)
    os.kill(system.services["executor"].proc.pid, sig)
    task = wait_for_state(stub, task_id, ENDED, limit=30)
    if sig == signal.SIGSTOP:
        os.kill(system.services["executor"].proc.pid, signal.SIGCONT)
    return task


def test_killed_executor_fails_its_tasks_naming_it(system: Cluster, stub: scheduler_pb2_grpc.SchedulerServiceStub) -> None:
    task = _lose_executor(system, stub, signal.SIGKILL)
    assert task.state == task_pb2.TASK_STATE_FAILED
    assert "executor" in task.error and task.executor_id in task.error and "lost" in task.error
    assert task.steps[0].state == task_pb2.STEP_STATE_FAILED


def test_silent_executor_is_declared_lost_after_heartbeat_timeout(
    system: Cluster, stub: scheduler_pb2_grpc.SchedulerServiceStub
) -> None:
    task = _lose_executor(system, stub, signal.SIGSTOP)  # alive socket, no heartbeats
    assert task.state == task_pb2.TASK_STATE_FAILED
    assert "stopped heartbeating" in task.error and task.executor_id in task.error


def test_tasks_spread_over_two_executors(tmp_path: Path) -> None:
    with cluster(tmp_path, "memory", "scheduler", CORRAL_EXECUTOR_CAPACITY="1") as c:
        for name in ("exec-a", "exec-b"):
            address = f"127.0.0.1:{free_port()}"
            c.start_executor(name, CORRAL_EXECUTOR_ADDRESS=address, CORRAL_EXECUTOR_ID=name)
        with c.channel(c.scheduler_address) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            wait_for_executors(channel, 2)
            ids = [
                stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=shell_spec("sleep 0.5"))).task_id
                for _ in range(4)
            ]
            tasks = [wait_for_state(stub, i, ENDED) for i in ids]
    assert all(t.state == task_pb2.TASK_STATE_COMPLETED for t in tasks)
    assert {t.executor_id for t in tasks} == {"exec-a", "exec-b"}


def test_env_values_are_write_only(stub: scheduler_pb2_grpc.SchedulerServiceStub) -> None:
    """A task's env reaches its steps, but no public read returns the values (they are often
    credentials): before, GetTask/ListTasks gave every caller every task's env."""
    spec = shell_spec('echo "$API_KEY"')
    spec.env["API_KEY"] = "sk-very-secret"
    submitted = stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))
    task = wait_for_state(stub, submitted.task_id, ENDED)
    assert task.state == task_pb2.TASK_STATE_COMPLETED, task.error
    assert task.steps[0].stdout == "sk-very-secret\n"  # the step had it
    listed = stub.ListTasks(scheduler_pb2.ListTasksRequest()).tasks
    for shown in (submitted.task, task, *[t for t in listed if t.task_id == submitted.task_id]):
        assert dict(shown.spec.env) == {"API_KEY": ""}
