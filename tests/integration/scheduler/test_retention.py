"""The retention sweep, with real scheduler, memory and bubblewrap executor processes and a
retention of about a second: finished tasks lose their record, events, history and directory;
a running task and a live sandbox keep everything, and the running task goes once it ended.

Before: nothing ever removed old task directories or events (2,200 tasks left 26 MB of
directories; one test left a 70 MB scheduler.db).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from harness import Cluster, cluster

from corral.internal.v1 import registry_pb2, registry_pb2_grpc
from corral.v1 import (
    memory_pb2,
    memory_pb2_grpc,
    sandbox_pb2,
    sandbox_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    task_pb2,
)

# 1.08 s after a task ended it is due; the sweeps run every 0.3 s.
RETENTION = {"CORRAL_RETENTION_HOURS": "0.0003", "CORRAL_RETENTION_SWEEP_SECONDS": "0.3"}
FINISHED = 3


def wait_until(condition: Callable[[], bool], what: str, limit: float = 90) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


@pytest.fixture
def system(tmp_path: Path) -> Iterator[Cluster]:
    tmp_path.chmod(0o755)  # the sandbox user must reach the tasks directory
    with cluster(tmp_path, "memory", "scheduler", "executor", **RETENTION) as c:
        with c.channel(c.scheduler_address) as channel:
            registry = registry_pb2_grpc.ExecutorRegistryServiceStub(channel)
            wait_until(
                lambda: any(e.alive for e in registry.ListExecutors(registry_pb2.ListExecutorsRequest()).executors),
                "the executor registered",
            )
        yield c


def shell(command: str) -> task_pb2.TaskSpec:
    return task_pb2.TaskSpec(steps=[task_pb2.Step(shell=task_pb2.ShellAction(command=command))])


def test_only_finished_tasks_are_removed_after_the_retention_period(system: Cluster) -> None:
    with system.channel(system.scheduler_address) as channel, system.channel(system.memory_address, "gateway") as mem:
        tasks = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        memory = memory_pb2_grpc.MemoryServiceStub(mem)
        sandboxes = sandbox_pb2_grpc.SandboxServiceStub(channel)
        tasks_dir = system.data_dir / "tasks"

        def state(task_id: str) -> int | None:
            try:
                return tasks.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id)).task.state
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND
                return None

        def history(task_id: str) -> int:
            return len(memory.ListEvents(memory_pb2.ListEventsRequest(task_id=task_id)).events)

        def gone(task_id: str) -> bool:
            return state(task_id) is None and history(task_id) == 0 and not (tasks_dir / task_id).exists()

        spec = sandbox_pb2.SandboxSpec()
        spec.ttl.FromSeconds(3600)
        sandbox = sandboxes.CreateSandbox(sandbox_pb2.CreateSandboxRequest(spec=spec)).sandbox
        in_sandbox = tasks.SubmitTask(
            scheduler_pb2.SubmitTaskRequest(spec=task_pb2.TaskSpec(
                sandbox_id=sandbox.sandbox_id, steps=[task_pb2.Step(shell=task_pb2.ShellAction(command="echo kept > /tmp/f"))]
            ))
        ).task_id
        running = tasks.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=shell("sleep 120"))).task_id
        wait_until(lambda: state(running) == task_pb2.TASK_STATE_RUNNING, "the long task runs")
        finished = [tasks.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=shell(f"echo {i}"))).task_id for i in range(FINISHED)]
        for task_id in finished:
            events = list(tasks.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task_id), timeout=120))
            assert events[-1].event.finished.state == task_pb2.TASK_STATE_COMPLETED

        wait_until(lambda: all(gone(t) for t in finished), "the finished tasks are removed everywhere")
        assert sum(1 for t in finished if gone(t)) == FINISHED
        # The running task keeps its record, history and directory, however old they are.
        assert state(running) == task_pb2.TASK_STATE_RUNNING
        assert history(running) > 0
        assert (tasks_dir / running).is_dir()
        # The live sandbox keeps its record and its files.
        assert sandboxes.GetSandbox(sandbox_pb2.GetSandboxRequest(sandbox_id=sandbox.sandbox_id)).sandbox.state == (
            sandbox_pb2.SANDBOX_STATE_ACTIVE
        )
        assert (system.data_dir / "sandboxes" / sandbox.sandbox_id).is_dir()
        wait_until(lambda: state(in_sandbox) is None, "the task that ran in the sandbox is removed")

        # Once it has ended, the long task goes too.
        tasks.CancelTask(scheduler_pb2.CancelTaskRequest(task_id=running))
        wait_until(lambda: gone(running), "the cancelled task is removed")
