"""The server interceptor every Corral server has (corral.grpc_server.new_server) and the
client's mapping back (corral.client): a real server on a real socket, handlers that raise."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import structlog.testing

from corral.client import typed_errors
from corral.errors import (
    ERROR_CLASS_KEY,
    CorralError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    SandboxEnded,
)
from corral.grpc_errors import from_rpc_error
from corral.grpc_server import insecure_channel, new_server
from corral.v1 import scheduler_pb2, scheduler_pb2_grpc


class Raising(scheduler_pb2_grpc.SchedulerServiceServicer):
    """Each method fails its own way."""

    async def GetTask(self, request: Any, context: Any) -> scheduler_pb2.GetTaskResponse:
        raise NotFound(f"no task with id {request.task_id!r}")

    async def SubmitTask(self, request: Any, context: Any) -> scheduler_pb2.SubmitTaskResponse:
        raise KeyError("a bug with a secret in it")

    async def CancelTask(self, request: Any, context: Any) -> scheduler_pb2.CancelTaskResponse:
        raise SandboxEnded("sandbox s1 is expired")

    async def ListTasks(self, request: Any, context: Any) -> scheduler_pb2.ListTasksResponse:
        await context.abort(grpc.StatusCode.OUT_OF_RANGE, "aborted by hand")
        raise AssertionError("unreachable")

    async def WatchTask(self, request: Any, context: Any) -> AsyncIterator[scheduler_pb2.WatchTaskResponse]:
        yield scheduler_pb2.WatchTaskResponse()
        if request.task_id == "bug":
            raise ZeroDivisionError("mid-stream bug")
        raise InvalidArgument("after_sequence is too large")


@pytest.fixture
async def stub() -> AsyncIterator[scheduler_pb2_grpc.SchedulerServiceAsyncStub]:
    server = new_server(authorize=False)  # the error mapping alone (tests/integration/trust: the policy)
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(Raising(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = insecure_channel(f"127.0.0.1:{port}")
    try:
        yield scheduler_pb2_grpc.SchedulerServiceStub(channel)
    finally:
        await channel.close(None)
        await server.stop(None)


async def test_a_corral_error_becomes_its_code_and_message(stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id="t9"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "no task with id 't9'"
    assert (ERROR_CLASS_KEY, "NotFound") in tuple(err.value.trailing_metadata() or ())


async def test_the_client_raises_the_class_the_server_raised(stub: Any) -> None:
    with pytest.raises(SandboxEnded) as err:
        with typed_errors():
            await stub.CancelTask(scheduler_pb2.CancelTaskRequest(task_id="t1"))
    assert isinstance(err.value, FailedPrecondition)
    assert err.value.message == "sandbox s1 is expired"


async def test_an_unexpected_exception_is_internal_generic_and_logged(stub: Any) -> None:
    with structlog.testing.capture_logs() as logs, pytest.raises(Internal) as err:
        with typed_errors():
            await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest())
    assert err.value.code == "INTERNAL"
    assert "secret" not in err.value.message
    assert "/corral.v1.SchedulerService/SubmitTask" in err.value.message
    [entry] = [e for e in logs if e["log_level"] == "error"]
    assert entry["method"] == "/corral.v1.SchedulerService/SubmitTask"
    assert entry.get("exc_info")


async def test_a_handler_that_aborts_itself_is_left_alone(stub: Any) -> None:
    with pytest.raises(InvalidArgument) as err:  # OUT_OF_RANGE reads as InvalidArgument
        with typed_errors():
            await stub.ListTasks(scheduler_pb2.ListTasksRequest())
    assert err.value.message == "aborted by hand"


async def test_streaming_handlers_are_mapped_too(stub: Any) -> None:
    received = []
    with pytest.raises(InvalidArgument) as err:
        with typed_errors():
            async for response in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id="t1")):
                received.append(response)
    assert len(received) == 1
    assert err.value.message == "after_sequence is too large"
    with pytest.raises(Internal):
        with typed_errors():
            async for _ in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id="bug")):
                pass


async def test_from_rpc_error_without_metadata_uses_the_code() -> None:
    channel = insecure_channel("127.0.0.1:1")  # nothing listens there
    try:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id="x"), timeout=5)
    finally:
        await channel.close(None)
    error = from_rpc_error(err.value)
    assert isinstance(error, CorralError)
    assert isinstance(error, ConnectionError)  # Unavailable
