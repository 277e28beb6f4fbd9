"""Long-lived sandboxes against what the executors may hold, and idempotent creation.

Real scheduler and bubblewrap executor processes. Before: 20 sandboxes with 7-day TTLs were
all accepted on an executor of capacity 2. Now each executor holds at most
CORRAL_EXECUTOR_MAX_SANDBOXES (default: its capacity), the next create is RESOURCE_EXHAUSTED
with a retry-after, and tasks still run beside the sandboxes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from harness import Cluster, cluster

from corral.internal.v1 import registry_pb2, registry_pb2_grpc
from corral.v1 import sandbox_pb2, sandbox_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, task_pb2

WEEK = 7 * 24 * 3600


def wait_until(condition: Callable[[], bool], what: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def executors(channel: grpc.Channel) -> list[registry_pb2.ExecutorInfo]:
    stub = registry_pb2_grpc.ExecutorRegistryServiceStub(channel)
    return [e for e in stub.ListExecutors(registry_pb2.ListExecutorsRequest()).executors if e.alive]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, grpc.Channel]]:
    data_dir = tmp_path_factory.mktemp("admission")
    data_dir.chmod(0o755)  # the sandbox user must reach the tasks directory
    with cluster(data_dir, "scheduler", "executor", CORRAL_EXECUTOR_CAPACITY="2") as c:
        with c.channel(c.scheduler_address) as channel:
            wait_until(lambda: len(executors(channel)) == 1, "the executor registered")
            yield c, channel


@pytest.fixture
def sandboxes(system: tuple[Cluster, grpc.Channel]) -> Iterator[sandbox_pb2_grpc.SandboxServiceStub]:
    stub = sandbox_pb2_grpc.SandboxServiceStub(system[1])
    yield stub
    for sandbox in stub.ListSandboxes(sandbox_pb2.ListSandboxesRequest()).sandboxes:
        stub.DeleteSandbox(sandbox_pb2.DeleteSandboxRequest(sandbox_id=sandbox.sandbox_id))


def week_spec() -> sandbox_pb2.SandboxSpec:
    spec = sandbox_pb2.SandboxSpec()
    spec.ttl.FromSeconds(WEEK)
    return spec


def test_sandboxes_beyond_what_the_executor_holds_are_refused_and_tasks_still_run(
    system: tuple[Cluster, grpc.Channel], sandboxes: sandbox_pb2_grpc.SandboxServiceStub
) -> None:
    _, channel = system
    [executor] = executors(channel)
    assert executor.capacity == 2 and executor.max_sandboxes == 2
    held = [sandboxes.CreateSandbox(sandbox_pb2.CreateSandboxRequest(spec=week_spec())).sandbox for _ in range(2)]
    refused = 0
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as err:
            sandboxes.CreateSandbox(sandbox_pb2.CreateSandboxRequest(spec=week_spec()))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "CORRAL_EXECUTOR_MAX_SANDBOXES" in (err.value.details() or "")
        assert dict(err.value.trailing_metadata() or ()).get("retry-after") == "10"  # type: ignore[attr-defined]
        refused += 1
    assert refused == 3
    active = sandboxes.ListSandboxes(sandbox_pb2.ListSandboxesRequest()).sandboxes
    assert sorted(s.sandbox_id for s in active) == sorted(s.sandbox_id for s in held)
    assert executors(channel)[0].sandboxes == 2

    # The executor's task slots are its tasks' still: a task runs to the end beside them.
    tasks = scheduler_pb2_grpc.SchedulerServiceStub(channel)
    spec = task_pb2.TaskSpec(steps=[task_pb2.Step(shell=task_pb2.ShellAction(command="echo beside"))])
    task_id = tasks.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec)).task_id
    events = list(tasks.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task_id), timeout=120))
    assert events[-1].event.finished.state == task_pb2.TASK_STATE_COMPLETED

    # Room again once one goes.
    sandboxes.DeleteSandbox(sandbox_pb2.DeleteSandboxRequest(sandbox_id=held[0].sandbox_id))
    again = sandboxes.CreateSandbox(sandbox_pb2.CreateSandboxRequest(spec=week_spec())).sandbox
    assert again.state == sandbox_pb2.SANDBOX_STATE_ACTIVE
    assert executors(channel)[0].sandboxes == 2


def test_a_retry_with_the_key_answers_the_sandbox_without_its_tokens(
    sandboxes: sandbox_pb2_grpc.SandboxServiceStub,
) -> None:
    key = f"sandbox-{uuid.uuid4()}"
    first = sandboxes.CreateSandbox(sandbox_pb2.CreateSandboxRequest(spec=week_spec(), idempotency_key=key))
    assert first.token and first.view_token and not first.replayed
    retry = sandboxes.CreateSandbox(sandbox_pb2.CreateSandboxRequest(spec=week_spec(), idempotency_key=key))
    assert retry.replayed and retry.sandbox.sandbox_id == first.sandbox.sandbox_id
    assert retry.token == "" and retry.view_token == ""  # shown once, to the first request
    assert len(sandboxes.ListSandboxes(sandbox_pb2.ListSandboxesRequest()).sandboxes) == 1
    other = week_spec()
    other.network = True
    with pytest.raises(grpc.RpcError) as err:
        sandboxes.CreateSandbox(sandbox_pb2.CreateSandboxRequest(spec=other, idempotency_key=key))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert len(sandboxes.ListSandboxes(sandbox_pb2.ListSandboxesRequest()).sandboxes) == 1


def test_concurrent_creates_with_one_key_make_one_sandbox(
    system: tuple[Cluster, grpc.Channel], sandboxes: sandbox_pb2_grpc.SandboxServiceStub
) -> None:
    c, _ = system
    request = sandbox_pb2.CreateSandboxRequest(spec=week_spec(), idempotency_key=f"race-{uuid.uuid4()}")
    callers = 6
    channels = [c.channel(c.scheduler_address) for _ in range(callers)]
    try:
        stubs = [sandbox_pb2_grpc.SandboxServiceStub(ch) for ch in channels]
        with ThreadPoolExecutor(callers) as pool:
            replies = list(pool.map(lambda s: s.CreateSandbox(request, timeout=180), stubs))
    finally:
        for channel in channels:
            channel.close()
    assert len({r.sandbox.sandbox_id for r in replies}) == 1
    assert sorted(r.replayed for r in replies) == [False] + [True] * (callers - 1)
    assert sum(1 for r in replies if r.token) == 1
    assert len(sandboxes.ListSandboxes(sandbox_pb2.ListSandboxesRequest()).sandboxes) == 1
