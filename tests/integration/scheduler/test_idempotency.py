"""Idempotency keys on SubmitTask, against a real scheduler process: a retry with the key
creates nothing and answers the first task; the key with another spec is ALREADY_EXISTS;
concurrent retries create one task between them (the database's unique key decides)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from harness import Cluster, cluster

from corral.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("idem"), "scheduler") as c:
        yield c


@pytest.fixture
def stub(scheduler: Cluster) -> Iterator[scheduler_pb2_grpc.SchedulerServiceStub]:
    with scheduler.channel(scheduler.scheduler_address) as channel:
        yield scheduler_pb2_grpc.SchedulerServiceStub(channel)


def marked_spec(marker: str) -> task_pb2.TaskSpec:
    return task_pb2.TaskSpec(steps=[task_pb2.Step(shell=task_pb2.ShellAction(command=f"echo {marker}"))])


def tasks_with(stub: scheduler_pb2_grpc.SchedulerServiceStub, marker: str) -> list[str]:
    listed = stub.ListTasks(scheduler_pb2.ListTasksRequest(page_size=500)).tasks
    return [t.task_id for t in listed if t.spec.steps[0].shell.command == f"echo {marker}"]


def test_a_retry_with_the_key_answers_the_first_task_and_creates_nothing(
    stub: scheduler_pb2_grpc.SchedulerServiceStub,
) -> None:
    marker, key = uuid.uuid4().hex, f"retry-{uuid.uuid4()}"
    first = stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=marked_spec(marker), idempotency_key=key))
    retries = [
        stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=marked_spec(marker), idempotency_key=key))
        for _ in range(3)
    ]
    assert not first.replayed
    assert [r.replayed for r in retries] == [True, True, True]
    assert {r.task_id for r in retries} == {first.task_id}
    assert retries[0].task.spec == first.task.spec
    assert tasks_with(stub, marker) == [first.task_id]
    # Without a key, the same spec is a new task each time.
    again = stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=marked_spec(marker)))
    assert not again.replayed and again.task_id != first.task_id
    assert len(tasks_with(stub, marker)) == 2


def test_the_key_with_another_spec_is_already_exists(stub: scheduler_pb2_grpc.SchedulerServiceStub) -> None:
    key = f"reuse-{uuid.uuid4()}"
    first = stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=marked_spec("one"), idempotency_key=key))
    with pytest.raises(grpc.RpcError) as err:
        stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=marked_spec("two"), idempotency_key=key))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert key in (err.value.details() or "") and "different request" in (err.value.details() or "")
    # The first request's retry still answers.
    retry = stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=marked_spec("one"), idempotency_key=key))
    assert retry.replayed and retry.task_id == first.task_id


@pytest.mark.parametrize(
    ("key", "problem"),
    [("x" * 256, "256 characters long"), ("has space", "outside the allowed set"), ("nul\0", "outside")],
)
def test_a_bad_key_is_invalid_argument_naming_it(
    stub: scheduler_pb2_grpc.SchedulerServiceStub, key: str, problem: str
) -> None:
    marker = uuid.uuid4().hex
    with pytest.raises(grpc.RpcError) as err:
        stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=marked_spec(marker), idempotency_key=key))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "idempotency_key" in (err.value.details() or "") and problem in (err.value.details() or "")
    assert tasks_with(stub, marker) == []


def test_concurrent_retries_create_one_task(scheduler: Cluster) -> None:
    marker, key = uuid.uuid4().hex, f"race-{uuid.uuid4()}"
    request = scheduler_pb2.SubmitTaskRequest(spec=marked_spec(marker), idempotency_key=key)
    callers = 16
    channels = [scheduler.channel(scheduler.scheduler_address) for _ in range(callers)]
    try:
        stubs = [scheduler_pb2_grpc.SchedulerServiceStub(c) for c in channels]
        with ThreadPoolExecutor(callers) as pool:
            replies = list(pool.map(lambda s: s.SubmitTask(request, timeout=30), stubs))
        assert len({r.task_id for r in replies}) == 1
        assert sorted(r.replayed for r in replies) == [False] + [True] * (callers - 1)
        assert tasks_with(stubs[0], marker) == [replies[0].task_id]
    finally:
        for channel in channels:
            channel.close()
