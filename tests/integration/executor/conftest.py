"""Fixtures for the executor's integration tests: a real executor on a free port, real sandboxes.

No scheduler or memory service runs here: the executor must work (and keep retrying quietly)
without them. Tests that need them start small servers of their own.

Every test using `executor` / `executor_factory` runs once per sandbox driver: bubblewrap, and
docker (marker `docker`; skipped, saying why, when no Docker engine or sandbox image is there).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from harness import executor_tls, free_port, require_docker, scheduler_channel

from corral.config import Settings
from corral.internal.v1 import executor_pb2, executor_pb2_grpc
from corral.schema import TaskRequest
from corral.v1 import task_pb2
from services.executor.server import RunningExecutor, start_executor

DRIVERS = ["bubblewrap", pytest.param("docker", marks=pytest.mark.docker)]
# CORRAL_TEST_DOCKER_RUNTIME=runsc: the docker driver's containers run on that OCI runtime
# (gVisor; CI runs a few modules so, scripts/test-gvisor); `gvisor_skip` names what it cannot do.
DOCKER_RUNTIME = os.environ.get("CORRAL_TEST_DOCKER_RUNTIME", "")
# Debian's runsc 2022-12 refuses statx(AT_NO_AUTOMOUNT) with EINVAL (newer gVisor accepts it).
GVISOR_NO_STATX = (
    "this runsc (Debian's, 2022-12) refuses statx with AT_NO_AUTOMOUNT, which coreutils 9's ls and "
    "stat pass (EINVAL)"
)


def gvisor_skip(driver: str, reason: str) -> None:
    """Skips a docker-driver test on gVisor, saying what gVisor does not do."""
    if driver == "docker" and DOCKER_RUNTIME == "runsc":
        pytest.skip(f"not on gVisor: {reason}")


@pytest.fixture(params=DRIVERS)
def sandbox_driver(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if name == "docker":
        require_docker()
    return name


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "executor_address": "127.0.0.1:0",
        # Nothing listens there: registration and history must fail quietly.
        "scheduler_address": f"127.0.0.1:{free_port()}",
        "memory_address": f"127.0.0.1:{free_port()}",
        "heartbeat_interval_seconds": 0.2,
        "step_timeout_seconds": 30,
    }
    values.update(overrides)
    # One CA per test (beside the data directories); each executor's certificate names its id.
    # (A unique id: a docker executor removes the containers labelled with its id at start.)
    values.update(executor_tls(data_dir.parent / "pki", values.get("executor_id") or f"executor-{os.urandom(4).hex()}"))
    return Settings(**values)


def spec(steps: list[dict[str, Any]], **task: Any) -> task_pb2.TaskSpec:
    """A TaskSpec from the JSON step format clients use."""
    return TaskRequest.model_validate({"steps": steps, **task}).to_proto()


@dataclass
class TaskOutcome:
    events: list[task_pb2.TaskEvent] = field(default_factory=list)

    @property
    def finished(self) -> task_pb2.TaskFinished:
        assert self.events[-1].WhichOneof("event") == "finished", self.events[-1]
        return self.events[-1].finished

    @property
    def state(self) -> str:
        return task_pb2.TaskState.Name(self.finished.state)

    @property
    def steps(self) -> list[task_pb2.StepResult]:
        return [e.step_finished.result for e in self.events if e.WhichOneof("event") == "step_finished"]

    def step(self, index: int) -> task_pb2.StepResult:
        return self.steps[index]

    def step_state(self, index: int) -> str:
        return task_pb2.StepState.Name(self.step(index).state)

    def kinds(self) -> list[str]:
        return [str(e.WhichOneof("event")) for e in self.events]


class ExecutorClient:
    def __init__(self, executor: RunningExecutor, settings: Settings) -> None:
        self.executor = executor
        self.settings = settings
        self.address = f"127.0.0.1:{executor.port}"
        assert settings.tls_dir is not None
        self.channel = scheduler_channel(settings.tls_dir, self.address)  # as the scheduler calls
        self.stub = executor_pb2_grpc.ExecutorServiceStub(self.channel)
        self._ids = 0

    def new_task_id(self) -> str:
        self._ids += 1
        return f"task-{os.getpid()}-{self._ids}-{os.urandom(3).hex()}"

    @property
    def driver(self) -> str:
        return self.settings.sandbox_driver

    def host_task_dir(self, task_id: str) -> Path:
        return self.settings.tasks_dir / task_id

    async def run(self, task_spec: task_pb2.TaskSpec, task_id: str | None = None) -> tuple[str, TaskOutcome]:
        task_id = task_id or self.new_task_id()
        outcome = TaskOutcome()
        call = self.stub.RunTask(executor_pb2.RunTaskRequest(task_id=task_id, spec=task_spec))
        async for response in call:
            outcome.events.append(response.event)
        return task_id, outcome

    async def run_steps(self, steps: list[dict[str, Any]], **task: Any) -> tuple[str, TaskOutcome]:
        return await self.run(spec(steps, **task))


ExecutorFactory = Callable[..., Awaitable[ExecutorClient]]


@pytest.fixture
async def executor_factory(tmp_path: Path, sandbox_driver: str) -> AsyncIterator[ExecutorFactory]:
    started: list[ExecutorClient] = []

    async def factory(**overrides: Any) -> ExecutorClient:
        data_dir = tmp_path / f"data{len(started)}"
        runtime = {"docker_runtime": DOCKER_RUNTIME} if sandbox_driver == "docker" and DOCKER_RUNTIME else {}
        settings = make_settings(data_dir, **{"sandbox_driver": sandbox_driver, **runtime, **overrides})
        executor = await start_executor(settings)
        client = ExecutorClient(executor, settings)
        started.append(client)
        return client

    yield factory
    for client in started:
        await client.channel.close()
        await client.executor.stop(grace=1)


@pytest.fixture
async def executor(executor_factory: ExecutorFactory) -> ExecutorClient:
    return await executor_factory()


def host_processes_matching(marker: str) -> list[int]:
    """Host pids whose command line contains `marker` (zombies excluded)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(name))
    return found


def grpc_code(exc: BaseException) -> grpc.StatusCode:
    assert isinstance(exc, grpc.aio.AioRpcError), exc
    return exc.code()
