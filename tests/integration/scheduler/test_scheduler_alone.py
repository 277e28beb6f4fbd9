"""The scheduler on its own: submit, get, list with paging, cancel while queued, watch, bad input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from harness import Cluster, cluster

from corral.internal.v1 import registry_pb2, registry_pb2_grpc
from corral.v1 import sandbox_pb2, sandbox_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, task_pb2


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("sched"), "scheduler") as c:
        yield c


@pytest.fixture
def stub(scheduler: Cluster) -> Iterator[scheduler_pb2_grpc.SchedulerServiceStub]:
    with scheduler.channel(scheduler.scheduler_address) as channel:
        yield scheduler_pb2_grpc.SchedulerServiceStub(channel)


def shell_spec(*commands: str) -> task_pb2.TaskSpec:
    return task_pb2.TaskSpec(steps=[task_pb2.Step(shell=task_pb2.ShellAction(command=c)) for c in commands])


def test_submitted_task_waits_scheduled_without_executor(stub: scheduler_pb2_grpc.SchedulerServiceStub) -> None:
    reply = stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=shell_spec("echo hi", "true")))
    assert len(reply.task_id) == 32
    task = stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=reply.task_id)).task
    assert task.state == task_pb2.TASK_STATE_SCHEDULED
    assert [s.tool for s in task.steps] == ["shell", "shell"]
    assert all(s.state == task_pb2.STEP_STATE_PENDING for s in task.steps)
    assert task.spec.steps[0].shell.command == "echo hi"


def test_cancel_queued_task_then_watch_replays_to_the_end(stub: scheduler_pb2_grpc.SchedulerServiceStub) -> None:
    task_id = stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=shell_spec("sleep 5"))).task_id
    cancelled = stub.CancelTask(scheduler_pb2.CancelTaskRequest(task_id=task_id)).task
    assert cancelled.state == task_pb2.TASK_STATE_CANCELLED
    assert cancelled.steps[0].state == task_pb2.STEP_STATE_SKIPPED
    events = [r.event for r in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task_id), timeout=10)]
    assert [e.WhichOneof("event") for e in events] == ["scheduled", "finished"]
    assert [e.sequence for e in events] == [1, 2]
    assert events[-1].finished.state == task_pb2.TASK_STATE_CANCELLED
    # Watching from after the last event returns at once, with nothing.
    assert list(stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task_id, after_sequence=2), timeout=10)) == []
    with pytest.raises(grpc.RpcError) as err:
        stub.CancelTask(scheduler_pb2.CancelTaskRequest(task_id=task_id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already ended" in (err.value.details() or "")


def test_list_filters_by_state_and_pages(stub: scheduler_pb2_grpc.SchedulerServiceStub) -> None:
    ids = [stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=shell_spec(f"echo {i}"))).task_id for i in range(5)]
    for task_id in ids[:2]:
        stub.CancelTask(scheduler_pb2.CancelTaskRequest(task_id=task_id))
    seen: list[str] = []
    token = ""
    while True:
        page = stub.ListTasks(
            scheduler_pb2.ListTasksRequest(state=task_pb2.TASK_STATE_CANCELLED, page_size=1, page_token=token)
        )
        assert len(page.tasks) <= 1
        seen += [t.task_id for t in page.tasks]
        assert all(t.state == task_pb2.TASK_STATE_CANCELLED for t in page.tasks)
        token = page.next_page_token
        if not token:
            break
    assert set(ids[:2]) <= set(seen)
    assert not set(ids[2:]) & set(seen)
    newest_first = stub.ListTasks(scheduler_pb2.ListTasksRequest(page_size=500)).tasks
    positions = [i for i, t in enumerate(newest_first) if t.task_id in ids]
    assert [newest_first[i].task_id for i in positions] == list(reversed(ids))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (task_pb2.TaskSpec(), "at least one step"),
        (task_pb2.TaskSpec(steps=[task_pb2.Step()]), "steps[0] has no action"),
        (shell_spec("echo", ""), "steps[1].shell.command is empty"),
        (
            task_pb2.TaskSpec(
                steps=[task_pb2.Step(shell=task_pb2.ShellAction(command="x"), timeout=duration_pb2.Duration(seconds=-1))]
            ),
            "steps[0].timeout must be positive",
        ),
        # Past what a timedelta holds (~1e14 s): INVALID_ARGUMENT, not an overflow's INTERNAL.
        (
            task_pb2.TaskSpec(
                steps=[task_pb2.Step(shell=task_pb2.ShellAction(command="x"))],
                step_timeout=duration_pb2.Duration(seconds=10**15),
            ),
            "step_timeout 1e+15s exceeds this deployment's maximum",
        ),
        (
            task_pb2.TaskSpec(
                steps=[
                    task_pb2.Step(shell=task_pb2.ShellAction(command="x"), timeout=duration_pb2.Duration(seconds=2**62))
                ]
            ),
            "steps[0].timeout 4.61169e+18s exceeds this deployment's maximum",
        ),
        (
            task_pb2.TaskSpec(
                steps=[task_pb2.Step(shell=task_pb2.ShellAction(command="x"))],
                limits=task_pb2.Limits(max_output_bytes=2**63 - 1),
            ),
            "limits.max_output_bytes 9223372036854775807 exceeds this deployment's maximum",
        ),
    ],
)
def test_invalid_specs_are_refused_with_the_field_named(
    stub: scheduler_pb2_grpc.SchedulerServiceStub, spec: task_pb2.TaskSpec, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")


def test_unknown_task_and_bad_requests(scheduler: Cluster, stub: scheduler_pb2_grpc.SchedulerServiceStub) -> None:
    for call in (
        lambda: stub.GetTask(scheduler_pb2.GetTaskRequest(task_id="nope")),
        lambda: stub.CancelTask(scheduler_pb2.CancelTaskRequest(task_id="nope")),
        lambda: list(stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id="nope"), timeout=5)),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "nope" in (err.value.details() or "")
    with pytest.raises(grpc.RpcError) as err:
        stub.ListTasks(scheduler_pb2.ListTasksRequest(page_token="garbage!"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with scheduler.channel(scheduler.scheduler_address, "executor", "x") as channel:
        registry = registry_pb2_grpc.ExecutorRegistryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            registry.RegisterExecutor(registry_pb2.RegisterExecutorRequest(executor_id="x", address="", capacity=1))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_state_persists_across_a_scheduler_restart(tmp_path: Path) -> None:
    with cluster(tmp_path, "scheduler") as c:
        with c.channel(c.scheduler_address) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            task_id = stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=shell_spec("true"))).task_id
        c.services["scheduler"].stop()
        c.start_scheduler()
        with c.channel(c.scheduler_address) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            task = stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id)).task
    assert task.state == task_pb2.TASK_STATE_SCHEDULED


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        # A Duration far past any timedelta or float nanosecond count still gets a clear answer.
        (sandbox_pb2.SandboxSpec(ttl=duration_pb2.Duration(seconds=10**15)), "ttl 1e+15s exceeds the maximum"),
        (sandbox_pb2.SandboxSpec(limits=task_pb2.Limits(max_processes=1)), "limits.max_processes 1 is below"),
        (sandbox_pb2.SandboxSpec(limits=task_pb2.Limits(disk_mb=2**63 - 1)), "limits.disk_mb 9223372036854775807 exceeds"),
        (sandbox_pb2.SandboxSpec(env={"A": "x\0y"}), "env.A contains a NUL character"),
    ],
)
def test_invalid_sandbox_specs_are_invalid_argument(scheduler: Cluster, spec: sandbox_pb2.SandboxSpec, message: str) -> None:
    with scheduler.channel(scheduler.scheduler_address) as channel:
        sandboxes = sandbox_pb2_grpc.SandboxServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            sandboxes.CreateSandbox(sandbox_pb2.CreateSandboxRequest(spec=spec), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")
