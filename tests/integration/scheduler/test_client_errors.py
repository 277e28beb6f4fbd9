"""CorralClient against a real scheduler process: failures are corral.errors classes carrying
the scheduler's message, never grpc.aio.AioRpcError."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from harness import Cluster, cluster

from corral.client import CorralClient
from corral.errors import (
    CorralError,
    FailedPrecondition,
    IdempotencyKeyReused,
    InvalidArgument,
    InvalidTask,
    NotFound,
    SandboxNotFound,
    TaskAlreadyFinished,
    TaskNotFound,
    Unavailable,
)
from corral.schema import TaskRequest
from corral.v1 import task_pb2


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("client-errors"), "scheduler") as c:
        yield c


async def test_unknown_task_is_not_found_with_the_servers_message(scheduler: Cluster) -> None:
    async with CorralClient(scheduler.scheduler_address, scheduler.settings()) as client:
        with pytest.raises(NotFound) as err:
            await client.get("nope")
        assert type(err.value) is TaskNotFound
        assert isinstance(err.value, LookupError)
        assert err.value.message == "no task with id 'nope'"
        assert not isinstance(err.value, grpc.aio.AioRpcError)
        with pytest.raises(TaskNotFound, match="no task with id 'gone'"):
            await client.cancel("gone")
        with pytest.raises(TaskNotFound, match="no task with id 'never'"):
            async for _ in client.watch("never"):
                pass


async def test_bad_input_is_invalid_argument_naming_the_field(scheduler: Cluster) -> None:
    async with CorralClient(scheduler.scheduler_address, scheduler.settings()) as client:
        with pytest.raises(InvalidArgument) as err:
            await client.submit(task_pb2.TaskSpec())
        assert type(err.value) is InvalidTask
        assert isinstance(err.value, ValueError)
        assert err.value.message == "a task needs at least one step"
        spec = task_pb2.TaskSpec(steps=[task_pb2.Step(shell=task_pb2.ShellAction(command=""))])
        with pytest.raises(InvalidTask, match=r"steps\[0\]\.shell\.command is empty"):
            await client.submit(spec)
        with pytest.raises(InvalidArgument, match="page_token is not valid"):
            await client.list(page_token="garbage!")
        with pytest.raises(InvalidTask, match="task_id is required"):
            await client.get("")
        sandboxed = TaskRequest.model_validate({"steps": [{"tool": "shell", "command": "true"}], "sandbox_id": "sb-x"})
        with pytest.raises(SandboxNotFound, match="no sandbox with id 'sb-x'"):
            await client.submit(sandboxed)


async def test_cancelling_an_ended_task_is_failed_precondition(scheduler: Cluster) -> None:
    async with CorralClient(scheduler.scheduler_address, scheduler.settings()) as client:
        task_id = await client.submit(TaskRequest.model_validate({"steps": [{"tool": "shell", "command": "true"}]}))
        await client.cancel(task_id)  # still queued (no executor): cancelled at once
        with pytest.raises(FailedPrecondition) as err:
            await client.cancel(task_id)
        assert type(err.value) is TaskAlreadyFinished
        assert err.value.message == f"task {task_id} already ended (TASK_STATE_CANCELLED)"


async def test_an_unreachable_scheduler_is_unavailable(tmp_path: Path) -> None:
    from harness import free_port

    async with CorralClient(f"127.0.0.1:{free_port()}", Cluster.new(tmp_path).settings()) as client:
        with pytest.raises(Unavailable) as err:
            await client.get("x")
    assert isinstance(err.value, CorralError)
    assert isinstance(err.value, ConnectionError)


async def test_a_retry_with_an_idempotency_key_returns_the_first_task(scheduler: Cluster) -> None:
    async with CorralClient(scheduler.scheduler_address, scheduler.settings()) as client:
        request = TaskRequest.model_validate({"steps": [{"tool": "shell", "command": "echo once"}]})
        first = await client.submit(request, idempotency_key="client-retry-1")
        assert await client.submit(request, idempotency_key="client-retry-1") == first
        other = TaskRequest.model_validate({"steps": [{"tool": "shell", "command": "echo twice"}]})
        with pytest.raises(IdempotencyKeyReused, match="client-retry-1"):
            await client.submit(other, idempotency_key="client-retry-1")
        with pytest.raises(InvalidArgument, match="idempotency_key"):
            await client.submit(request, idempotency_key="not a key")
