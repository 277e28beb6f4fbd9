"""The one mapping between corral.errors, gRPC status codes and HTTP statuses."""

from __future__ import annotations

import grpc
import pytest

from corral import errors
from corral.errors import (
    CorralError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    InvalidTask,
    NotFound,
    SandboxNotFound,
    TaskNotFound,
    Unavailable,
)
from corral.grpc_errors import error_class, from_status, http_status, status_code

ROOTS = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, 400, ValueError),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND, 404, LookupError),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, 409, CorralError),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, 409, RuntimeError),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, 429, CorralError),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE, 503, ConnectionError),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED, 504, TimeoutError),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, 403, PermissionError),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, 401, CorralError),
    (errors.Unimplemented, grpc.StatusCode.UNIMPLEMENTED, 501, NotImplementedError),
    (errors.Internal, grpc.StatusCode.INTERNAL, 500, CorralError),
]


@pytest.mark.parametrize(("cls", "code", "status", "builtin"), ROOTS)
def test_each_class_has_one_code_one_status_and_a_builtin(
    cls: type[CorralError], code: grpc.StatusCode, status: int, builtin: type[Exception]
) -> None:
    assert status_code(cls) == code
    assert cls.http_status == status
    assert error_class(code) is cls
    assert http_status(code) == status
    error = from_status(code, "the message")
    assert type(error) is cls
    assert isinstance(error, CorralError)
    assert isinstance(error, builtin)
    assert str(error) == error.message == "the message"


def test_codes_without_a_class_map_to_the_nearest_one() -> None:
    assert error_class(grpc.StatusCode.OUT_OF_RANGE) is InvalidArgument
    assert error_class(grpc.StatusCode.ABORTED) is FailedPrecondition
    assert error_class(grpc.StatusCode.CANCELLED) is Unavailable
    assert error_class(grpc.StatusCode.UNKNOWN) is Internal
    assert error_class(grpc.StatusCode.DATA_LOSS) is Internal
    assert str(from_status(grpc.StatusCode.NOT_FOUND, "")) == "not_found"


def test_domain_errors_derive_from_the_tree() -> None:
    assert issubclass(InvalidTask, InvalidArgument)
    assert issubclass(TaskNotFound, NotFound)
    assert issubclass(SandboxNotFound, NotFound)
    assert status_code(TaskNotFound) == grpc.StatusCode.NOT_FOUND


def test_the_class_the_server_named_is_raised_again_when_it_means_the_code() -> None:
    named = from_status(grpc.StatusCode.NOT_FOUND, "no task with id 'x'", "TaskNotFound")
    assert type(named) is TaskNotFound
    assert named.message == "no task with id 'x'"
    # A name this process does not know, or one that disagrees with the code: the code's class.
    assert type(from_status(grpc.StatusCode.NOT_FOUND, "x", "NoSuchClass")) is NotFound
    assert type(from_status(grpc.StatusCode.INVALID_ARGUMENT, "x", "TaskNotFound")) is InvalidArgument


def test_every_domain_error_is_defined_once() -> None:
    """Importing each service's errors finds no second class of the same name."""
    import corral.steps
    import services.executor.errors
    import services.executor.runner
    import services.gui.input
    import services.memory.store
    import services.scheduler.core
    import services.scheduler.sandboxes

    assert services.executor.runner.InvalidTask is InvalidTask
    assert corral.steps.InvalidTask is InvalidTask
    assert services.scheduler.sandboxes.SandboxNotFound is SandboxNotFound
    assert services.memory.store.NotFound is NotFound
    assert services.memory.store.InvalidArgument is InvalidArgument
    assert issubclass(services.executor.errors.AtCapacity, errors.ResourceExhausted)
    assert issubclass(services.executor.errors.AlreadyRunning, errors.AlreadyExists)
    assert issubclass(services.gui.input.InvalidInput, InvalidArgument)
    assert issubclass(services.gui.input.InputFailed, Internal)
    seen: dict[str, type[CorralError]] = {}
    stack: list[type[CorralError]] = [CorralError]
    while stack:
        cls = stack.pop()
        assert seen.setdefault(cls.__name__, cls) is cls, f"{cls.__name__} is defined twice"
        stack.extend(cls.__subclasses__())
