"""Scheduler replicas on PostgreSQL fail over: real replicas, executors (bubblewrap), kill -9.

Two replicas share one database; the leader holds a lease row, the other stands by. Killing
the leader under load loses nothing and repeats nothing: the standby takes the lease over, the
executors (given every replica's address) register with it and report what they hold, it
follows those tasks again (AttachTask) from the last event stored, and every accepted task
completes once, with one `started` and events numbered 1..N. Clients given every replica's
address reach the new leader without being told which it is. A deposed leader (frozen past its
lease, then resumed) has its writes refused and steps down. Asserted in counts, never times;
the takeover time is printed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest
from fault_stack import Tally, sleepy_spec
from replicas import ReplicaStack

from corral.internal.v1 import executor_pb2, executor_pb2_grpc
from corral.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2
from services.scheduler.leadership import STANDBY_MESSAGE, STEPPED_DOWN_EXIT

pytestmark = pytest.mark.slow

LOAD = 100


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[ReplicaStack]:
    """One stack for both tests (each leaves two replicas, one leading): starting it is most
    of their time."""
    s = ReplicaStack(tmp_path_factory.mktemp("failover"), postgres_url, executors=1, capacity=8)
    try:
        s.start_all()
        yield s
    finally:
        s.stop()


def running(stack: ReplicaStack, at_least: int, limit: float = 60) -> int:
    """How many tasks run, once at least `at_least` do (or at the limit)."""
    deadline = time.monotonic() + limit
    with stack.channel() as chan:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(chan)
        while True:
            request = scheduler_pb2.ListTasksRequest(state=task_pb2.TASK_STATE_RUNNING, page_size=100)
            count = len(stub.ListTasks(request, timeout=10).tasks)
            if count >= at_least or time.monotonic() > deadline:
                return count
            time.sleep(0.05)


def assert_each_ran_once(stack: ReplicaStack, task_ids: list[str]) -> None:
    tasks = stack.wait_ended(task_ids, limit=120)
    audits = stack.audit(tasks)
    tally = Tally.of(audits)
    assert tally.unfinished == 0, tally.failures
    assert tally.completed == len(task_ids), tally.failures
    assert tally.run_twice == 0 and tally.misnumbered == 0, tally.failures
    ends = [[e.HasField("finished") for e in a.events] for a in audits]
    assert all(sum(end) == 1 and end[-1] for end in ends), "a task's events do not end in one `finished`"


@pytest.mark.timeout(180)
def test_killing_the_leader_under_load_loses_nothing_and_repeats_nothing(stack: ReplicaStack) -> None:
    leader = stack.leader()
    standby = next(n for n in stack.replica_addresses if n != leader)
    assert leader is not None
    task_ids = stack.submit([sleepy_spec(steps=2, seconds=0.3) for _ in range(LOAD)])
    assert running(stack, at_least=3) >= 3

    killed = time.monotonic()
    stack.kill(leader)
    assert stack.wait_leader(60, besides=leader) == standby
    took_over = time.monotonic() - killed
    stack.wait_for_executors(1, limit=60)
    back = time.monotonic() - killed
    print(f"\nfailover: {standby} leads {took_over:.2f}s after the leader's kill -9; "
          f"the executor registered with it after {back:.2f}s")
    assert "leading: this scheduler replica took the lease" in stack.log(standby)

    # The same client (every replica's address) reaches the new leader.
    task_ids += stack.submit([sleepy_spec(steps=1, seconds=0.1) for _ in range(10)])
    assert_each_ran_once(stack, task_ids)
    followed_again = stack.log(standby).count("following a task again")
    print(f"tasks followed again by the new leader: {followed_again}")
    assert followed_again > 0
    stack.start(leader)  # back, as a standby
    stack.wait_in_log(leader, "standing by", 60)


@pytest.mark.timeout(180)
def test_a_deposed_leader_is_refused_and_steps_down(stack: ReplicaStack) -> None:
    leader = stack.leader()
    standby = next(n for n in stack.replica_addresses if n != leader)
    assert leader is not None
    with stack.cluster.channel(stack.replica_addresses[standby]) as chan:
        with pytest.raises(grpc.RpcError) as refused:
            scheduler_pb2_grpc.SchedulerServiceStub(chan).ListTasks(scheduler_pb2.ListTasksRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert refused.value.details() == STANDBY_MESSAGE
    # Probes (deploy/kubernetes): not ready (it must get no calls), but alive.
    probe = [sys.executable, "-m", "corral.healthcheck", stack.replica_addresses[standby]]
    ready = subprocess.run(probe, env=stack.cluster.env, capture_output=True, text=True, timeout=60)
    assert ready.returncode == 1 and "NOT_SERVING" in ready.stderr
    assert subprocess.run([*probe, "--alive"], env=stack.cluster.env, timeout=60).returncode == 0

    # Every task started before the freeze (fewer than the executor's slots): what the frozen
    # leader does on waking is write their events (refused), not dispatch.
    task_ids = stack.submit([sleepy_spec(steps=8, seconds=0.5) for _ in range(6)])
    assert running(stack, at_least=6) == 6
    frozen = stack.cluster.services[leader].proc
    frozen.send_signal(signal.SIGSTOP)
    try:
        assert stack.wait_leader(60, besides=leader) == standby
        stack.wait_for_executors(1, limit=60)
    finally:
        frozen.send_signal(signal.SIGCONT)
    # Resumed, it still believes it leads: its first write or renewal finds the new epoch.
    assert frozen.wait(timeout=60) == STEPPED_DOWN_EXIT
    log = stack.log(leader)
    assert "stepping down: this scheduler replica lost the lease" in log
    print("\ndeposed leader:", [line for line in log.splitlines() if "stepping down" in line][-1][:300])
    assert stack.serving(standby)
    assert_each_ran_once(stack, task_ids)


@pytest.mark.timeout(120)
def test_an_executor_refuses_a_deposed_leaders_calls(stack: ReplicaStack) -> None:
    """The database refuses a deposed leader's writes; its calls to executors carry its
    leadership epoch, which the executor compares with the one it registered with. Before, a
    leader frozen between storing an assignment and sending RunTask could, woken, start a task
    the new leader had requeued (run twice, had it been placed elsewhere) or cancel one the new
    leader follows. Here the deposed leader's calls are made directly, as a scheduler."""
    leader = stack.leader()
    assert leader is not None
    epochs = [int(e) for e in re.findall(r"took the lease\b.*?\bepoch=(\d+)", stack.log(leader))]
    assert epochs, stack.log(leader)[-2000:]
    current = epochs[-1]
    stack.wait_for_executors(1, limit=60)
    address = stack.cluster.executor_address
    task_id = f"deposed-{os.urandom(4).hex()}"
    run = executor_pb2.RunTaskRequest(task_id=task_id, spec=sleepy_spec(steps=1, seconds=0.1), epoch=1)
    with stack.cluster.channel(address, "scheduler") as chan:
        stub = executor_pb2_grpc.ExecutorServiceStub(chan)
        run.leader_epoch = current - 1
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.RunTask(run, timeout=30))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "deposed scheduler replica" in (refused.value.details() or "")
        cancel = executor_pb2.CancelTaskRequest(task_id=task_id, reason="late", leader_epoch=current - 1)
        with pytest.raises(grpc.RpcError) as refused_cancel:
            stub.CancelTask(cancel, timeout=30)
        assert refused_cancel.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        status = stub.GetExecutorStatus(executor_pb2.GetExecutorStatusRequest(), timeout=30)
        assert task_id not in status.running_task_ids
        # The leader's own epoch is taken (the executor registered with it).
        run.leader_epoch = current
        events = list(stub.RunTask(run, timeout=60))
        assert events[-1].event.HasField("finished"), events[-1]
