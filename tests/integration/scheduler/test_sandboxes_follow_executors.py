"""Long-lived sandbox records follow their executor: a restart or a loss fails them, naming it.

Real scheduler and executor processes; the executor is killed, restarted or stopped (SIGSTOP)
under a sandbox, and the record a client sees must say what happened instead of staying active.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from harness import Cluster, cluster

from corral.internal.v1 import registry_pb2, registry_pb2_grpc
from corral.v1 import sandbox_pb2, sandbox_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, task_pb2


def wait_until(condition: Callable[[], bool], what: str, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def alive_executors(channel: grpc.Channel) -> list[registry_pb2.ExecutorInfo]:
    stub = registry_pb2_grpc.ExecutorRegistryServiceStub(channel)
    return [e for e in stub.ListExecutors(registry_pb2.ListExecutorsRequest()).executors if e.alive]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    # The sandbox user must be able to reach the tasks directory without staging.
    tmp_path.chmod(0o755)
    return tmp_path


@contextlib.contextmanager
def start(data_dir: Path, **overrides: str) -> Iterator[tuple[Cluster, grpc.Channel]]:
    with cluster(data_dir, "scheduler", "executor", **overrides) as system:
        with system.channel(system.scheduler_address) as channel:
            wait_until(lambda: len(alive_executors(channel)) == 1, "the executor registered")
            yield system, channel


def run_dir(system: Cluster, sandbox_id: str) -> Path:
    """The sandbox's run directory on the executor's host (CORRAL_DATA_DIR/run/ID)."""
    return system.data_dir / "run" / sandbox_id


def create_sandbox(system: Cluster, channel: grpc.Channel) -> sandbox_pb2.Sandbox:
    stub = sandbox_pb2_grpc.SandboxServiceStub(channel)
    spec = sandbox_pb2.SandboxSpec()
    spec.ttl.FromSeconds(600)
    sandbox = stub.CreateSandbox(sandbox_pb2.CreateSandboxRequest(spec=spec)).sandbox
    assert sandbox.state == sandbox_pb2.SANDBOX_STATE_ACTIVE
    assert run_dir(system, sandbox.sandbox_id).is_dir()
    return sandbox


def get_sandbox(channel: grpc.Channel, sandbox_id: str) -> sandbox_pb2.Sandbox:
    stub = sandbox_pb2_grpc.SandboxServiceStub(channel)
    return stub.GetSandbox(sandbox_pb2.GetSandboxRequest(sandbox_id=sandbox_id)).sandbox


def test_an_executor_restart_fails_its_sandboxes(data_dir: Path) -> None:
    # A heartbeat timeout far away: the restart itself must be what ends the record.
    with start(data_dir, CORRAL_HEARTBEAT_TIMEOUT_SECONDS="120") as (system, channel):
        sandbox = create_sandbox(system, channel)
        system.services["executor"].stop(signal.SIGKILL)
        system.start_executor()

        wait_until(
            lambda: get_sandbox(channel, sandbox.sandbox_id).state == sandbox_pb2.SANDBOX_STATE_FAILED,
            "the record failed",
        )
        record = get_sandbox(channel, sandbox.sandbox_id)
        assert "restarted" in record.error and sandbox.executor_id in record.error, record.error

        # Tasks naming it are refused with the reason; a new sandbox works on the new executor.
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        spec = task_pb2.TaskSpec(
            sandbox_id=sandbox.sandbox_id, steps=[task_pb2.Step(shell=task_pb2.ShellAction(command="true"))]
        )
        with pytest.raises(grpc.RpcError) as refused:
            scheduler.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "restarted" in (refused.value.details() or "")
        replacement = create_sandbox(system, channel)
        spec.sandbox_id = replacement.sandbox_id
        task_id = scheduler.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec)).task_id
        wait_until(
            lambda: scheduler.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id)).task.state
            == task_pb2.TASK_STATE_COMPLETED,
            "a task ran in the new sandbox",
        )


def test_a_lost_executor_fails_its_sandboxes_and_removes_them_when_back(data_dir: Path) -> None:
    with start(data_dir, CORRAL_HEARTBEAT_TIMEOUT_SECONDS="2") as (system, channel):
        sandbox = create_sandbox(system, channel)
        executor = system.services["executor"].proc
        os.kill(executor.pid, signal.SIGSTOP)  # its socket stays open; only the heartbeats stop
        try:
            wait_until(
                lambda: get_sandbox(channel, sandbox.sandbox_id).state == sandbox_pb2.SANDBOX_STATE_FAILED,
                "the record failed",
            )
        finally:
            os.kill(executor.pid, signal.SIGCONT)
        record = get_sandbox(channel, sandbox.sandbox_id)
        assert "declared lost" in record.error and sandbox.executor_id in record.error, record.error

        # Back, it registers again and is told to remove the sandbox nobody can use any more.
        wait_until(lambda: len(alive_executors(channel)) == 1, "the executor registered again")
        wait_until(lambda: not run_dir(system, sandbox.sandbox_id).exists(), "the executor removed the sandbox")
        assert get_sandbox(channel, sandbox.sandbox_id).state == sandbox_pb2.SANDBOX_STATE_FAILED
