"""Services that come back after a long outage are used again: real processes, kill -9.

The outages are long enough (8 s) that gRPC's default reconnect backoff would have grown past
several seconds; the tests assert what happens (counts and states), never how fast. How fast
is bench/rejoin.py's business.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from harness import Cluster, cluster
from test_with_executor import ENDED, shell_spec, wait_for_executors

from corral.internal.v1 import registry_pb2, registry_pb2_grpc
from corral.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2

OUTAGE_SECONDS = 8.0
QUEUED = 6


@pytest.fixture
def system(tmp_path: Path) -> Iterator[Cluster]:
    tmp_path.chmod(0o755)  # sandboxes run as an unprivileged host uid
    # Unbuffered: the scheduler's log is read (and counted) while it runs.
    with cluster(
        tmp_path, "memory", "scheduler", "executor", CORRAL_EXECUTOR_CAPACITY="2", PYTHONUNBUFFERED="1"
    ) as c:
        yield c


def wait_all_ended(stub: scheduler_pb2_grpc.SchedulerServiceStub, task_ids: list[str]) -> list[task_pb2.Task]:
    deadline = time.monotonic() + 90
    while True:
        tasks = [stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=t)).task for t in task_ids]
        if all(t.state in ENDED for t in tasks) or time.monotonic() > deadline:
            return tasks
        time.sleep(0.1)


def alive_executors(channel: grpc.Channel) -> list[str]:
    stub = registry_pb2_grpc.ExecutorRegistryServiceStub(channel)
    return [e.executor_id for e in stub.ListExecutors(registry_pb2.ListExecutorsRequest()).executors if e.alive]


def test_queued_tasks_run_on_an_executor_back_from_a_long_outage(system: Cluster) -> None:
    with system.channel(system.scheduler_address) as channel:
        wait_for_executors(channel, 1)
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        system.services["executor"].stop(signal.SIGKILL)
        # Submitted at once: the scheduler tries the dead executor (UNAVAILABLE, requeued)
        # before declaring it lost, which starts that channel's reconnect attempts.
        task_ids = [
            stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=shell_spec(f"echo queued-{i}"))).task_id
            for i in range(QUEUED)
        ]
        time.sleep(OUTAGE_SECONDS)
        assert alive_executors(channel) == []  # declared lost meanwhile
        queued = [stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=t)).task.state for t in task_ids]
        assert queued == [task_pb2.TASK_STATE_SCHEDULED] * QUEUED

        scheduler_log = system.services["scheduler"]
        before_return = len(scheduler_log.log())
        system.start_executor()
        tasks = wait_all_ended(stub, task_ids)
        assert [t.state for t in tasks] == [task_pb2.TASK_STATE_COMPLETED] * QUEUED, [t.error for t in tasks]
        assert {t.executor_id for t in tasks} == {system.executor_ids["executor"]}
        # The returning executor took its first task: no RunTask hit the old channel's backoff
        # (UNAVAILABLE at once, task requeued, executor marked away until it registered again).
        after_return = scheduler_log.log()[before_return:]
        assert after_return.count("executor could not take the task; requeued") == 0, after_return
        assert after_return.count("executor registered") == 1, after_return


def test_executor_registers_again_and_runs_tasks_after_a_scheduler_outage(system: Cluster) -> None:
    with system.channel(system.scheduler_address) as channel:
        wait_for_executors(channel, 1)
    system.services["scheduler"].stop(signal.SIGKILL)
    time.sleep(OUTAGE_SECONDS)
    system.start_scheduler()
    with system.channel(system.scheduler_address) as channel:
        wait_for_executors(channel, 1)  # registered again, by itself
        assert alive_executors(channel) == [system.executor_ids["executor"]]
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        task_ids = [
            stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=shell_spec(f"echo after-{i}"))).task_id
            for i in range(QUEUED)
        ]
        tasks = wait_all_ended(stub, task_ids)
        assert [t.state for t in tasks] == [task_pb2.TASK_STATE_COMPLETED] * QUEUED, [t.error for t in tasks]
