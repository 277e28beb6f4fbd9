"""A scheduler restart loses nothing and repeats nothing: real processes, kill -9.

The executor keeps running its tasks while the scheduler is away; the restarted scheduler takes
them back (AttachTask) from the last event it stored, so every task completes once, with one
`task_started` and events numbered 1..N without gap or repeat. Assignments carry an epoch the
executor fences on. Only the tasks of an executor that does not come back end `failed`, naming
it. Everything is asserted in counts, never in times.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from fault_stack import FaultStack, Tally, sleepy_spec

from corral.internal.v1 import executor_pb2, executor_pb2_grpc
from corral.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2

pytestmark = pytest.mark.slow

LOAD = 60


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[FaultStack]:
    s = FaultStack(tmp_path, executors=2, capacity=4, gateway=True)
    try:
        s.start_all()
        yield s
    finally:
        s.stop()


def wait_running(stack: FaultStack, task_ids: list[str], at_least: int, limit: float = 60) -> list[str]:
    deadline = time.monotonic() + limit
    while True:
        running = [t for t, task in stack.states(task_ids).items() if task.state == task_pb2.TASK_STATE_RUNNING]
        if len(running) >= at_least or time.monotonic() > deadline:
            return running
        time.sleep(0.05)


def follow_across_restarts(stack: FaultStack, task_id: str, seen: list[tuple[int, str]]) -> None:
    """WatchTask from the start, resumed after the last event seen whenever the scheduler goes."""
    for _ in range(100):
        try:
            with stack.channel() as chan:
                stub = scheduler_pb2_grpc.SchedulerServiceStub(chan)
                after = seen[-1][0] if seen else 0
                request = scheduler_pb2.WatchTaskRequest(task_id=task_id, after_sequence=after)
                for response in stub.WatchTask(request, timeout=60, wait_for_ready=True):
                    seen.append((response.event.sequence, response.event.WhichOneof("event") or ""))
                    if response.event.HasField("finished"):
                        return
        except grpc.RpcError:
            time.sleep(0.1)


@pytest.mark.timeout(360)
def test_scheduler_kill_under_load_completes_every_task_once(stack: FaultStack) -> None:
    task_ids = stack.submit([sleepy_spec(steps=3, seconds=0.3) for _ in range(LOAD)])
    running = wait_running(stack, task_ids, at_least=6)
    assert len(running) >= 6
    watched: list[tuple[int, str]] = []
    watcher = threading.Thread(target=follow_across_restarts, args=(stack, running[0], watched))
    watcher.start()
    stack.kill("scheduler")
    time.sleep(1.0)  # the executors go on without it
    stack.start("scheduler")
    watcher.join(60)

    tasks = stack.wait_ended(task_ids, limit=200)
    audits = stack.audit(tasks)
    tally = Tally.of(audits)
    unfinished = [(t.task_id, task_pb2.TaskState.Name(t.state), t.executor_id) for t in tasks.values() if not t.error
                  and t.state not in (task_pb2.TASK_STATE_COMPLETED, task_pb2.TASK_STATE_CANCELLED)]
    assert (tally.completed, tally.failed, tally.cancelled, tally.unfinished) == (LOAD, 0, 0, 0), (
        tally.failures, unfinished, stack.log("scheduler")[-4000:]
    )
    assert tally.run_twice == 0
    assert tally.misnumbered == 0
    # The tasks caught running were followed again, not started again: one `started` each,
    # and the events a client follows through the gateway are the same 1..N.
    log = stack.log("scheduler")
    assert log.count("following a task again") >= len(running) - 1, log[-3000:]  # one may end in between
    # A watcher that followed live across the kill (resuming after the last event it saw) saw
    # what is stored: the same numbers for the same events.
    [first] = [a for a in audits if a.task_id == running[0]]
    assert watched == [(e.sequence, e.WhichOneof("event")) for e in first.events]
    for task_id in running[:3]:
        frames = stack.gateway_events(task_id)
        assert [seq for seq, _ in frames] == list(range(1, len(frames) + 1))
        assert [kind for _, kind in frames].count("started") == 1
        assert frames[-1][1] == "finished"


@pytest.mark.timeout(180)
def test_executor_refuses_a_stale_assignment(stack: FaultStack) -> None:
    spec = task_pb2.TaskSpec(steps=[task_pb2.Step(shell=task_pb2.ShellAction(command="sleep 20"))])
    [task_id] = stack.submit([spec])
    assert wait_running(stack, [task_id], at_least=1) == [task_id]
    address = stack.executor_address(stack.states([task_id])[task_id].executor_id)
    # As the scheduler would call (its certificate), with the epochs of other assignments.
    with stack.cluster.channel(address, "scheduler") as chan:
        executor = executor_pb2_grpc.ExecutorServiceStub(chan)
        with pytest.raises(grpc.RpcError) as stale:
            list(executor.RunTask(executor_pb2.RunTaskRequest(task_id=task_id, spec=spec, epoch=0), timeout=10))
        assert stale.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"stale assignment of task {task_id}: epoch 0 is older than epoch 1" in (stale.value.details() or "")
        with pytest.raises(grpc.RpcError) as again:
            list(executor.RunTask(executor_pb2.RunTaskRequest(task_id=task_id, spec=spec, epoch=1), timeout=10))
        assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "is already running on this executor" in (again.value.details() or "")
        with pytest.raises(grpc.RpcError) as attach:
            list(executor.AttachTask(executor_pb2.AttachTaskRequest(task_id=task_id, epoch=0), timeout=10))
        assert attach.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as unknown:
            list(executor.AttachTask(executor_pb2.AttachTaskRequest(task_id="never-ran", epoch=1), timeout=10))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with stack.channel() as chan:
        scheduler_pb2_grpc.SchedulerServiceStub(chan).CancelTask(scheduler_pb2.CancelTaskRequest(task_id=task_id))
    [audit] = stack.audit(stack.wait_ended([task_id], limit=30))
    assert audit.state == task_pb2.TASK_STATE_CANCELLED
    assert audit.starts == 1  # the refused calls started nothing


@pytest.mark.timeout(180)
def test_tasks_of_an_executor_gone_past_the_grace_fail_naming_it(tmp_path: Path) -> None:
    stack = FaultStack(tmp_path, executors=1, capacity=2, CORRAL_EXECUTOR_ORPHAN_GRACE_SECONDS="3")
    try:
        stack.start_all()
        spec = task_pb2.TaskSpec(steps=[task_pb2.Step(shell=task_pb2.ShellAction(command="sleep 60"))])
        task_ids = stack.submit([spec, spec])
        assert len(wait_running(stack, task_ids, at_least=2)) == 2
        stack.kill("scheduler")
        stack.kill("executor")  # for good
        stack.start("scheduler")
        tasks = stack.wait_ended(task_ids, limit=30)
        executor_id = stack.cluster.executor_ids["executor"]
        assert [t.state for t in tasks.values()] == [task_pb2.TASK_STATE_FAILED] * 2
        for task in tasks.values():
            assert f"executor {executor_id} did not come back within 3s" in task.error
        stack.start("executor")  # back late: it releases what its killed run left (mounts)
        stack.wait_for_executors(1)
    finally:
        stack.stop()


@pytest.mark.timeout(240)
def test_restart_of_everything_with_tasks_queued_completes_them(tmp_path: Path) -> None:
    stack = FaultStack(tmp_path, executors=1, capacity=2)
    try:
        stack.start_all()
        stack.kill("executor")  # nowhere to run: the tasks stay queued
        task_ids = stack.submit([sleepy_spec(steps=1, seconds=0.1) for _ in range(8)])
        assert stack.count_in_state(task_ids, task_pb2.TASK_STATE_SCHEDULED) == 8
        for name in ("scheduler", "memory"):
            stack.kill(name)
        # Half as if the scheduler had died between storing their assignment and sending RunTask.
        never_sent = task_ids[:4]
        with sqlite3.connect(tmp_path / "scheduler.db") as db:
            db.executemany(
                "UPDATE scheduler_tasks SET assigned_to = ?, epoch = 1 WHERE task_id = ?",
                [(stack.cluster.executor_ids["executor"], t) for t in never_sent],
            )
        for name in ("memory", "scheduler", "executor"):
            stack.start(name)
        tally = Tally.of(stack.audit(stack.wait_ended(task_ids, limit=90), history=True))
        assert (tally.completed, tally.failed, tally.unfinished, tally.run_twice) == (8, 0, 0, 0), tally.failures
        assert tally.misnumbered == 0
        assert tally.history_missing == 0
        # The executor came back without them: requeued, and run under the next epoch.
        assert stack.log("scheduler").count("assigned task never started; requeued") == len(never_sent)
        with sqlite3.connect(tmp_path / "scheduler.db") as db:
            epochs = dict(db.execute("SELECT task_id, epoch FROM scheduler_tasks").fetchall())
        assert all(epochs[t] >= 2 for t in never_sent), epochs  # above the assignment given up
    finally:
        stack.stop()
