"""One exception tree for all of Corral, and the one mapping between it and gRPC / HTTP.

Each class is also the builtin it resembles (`NotFound` is a `LookupError`, `DeadlineExceeded`
a `TimeoutError`...), so callers that know nothing of Corral still catch it sensibly. Servers
raise these; `corral.grpc_server`'s interceptor turns them into status codes (and names the
class in the call's trailing metadata); the Python client turns a failed call back into the
same class (`from_rpc_error`: the named class when this process knows it and it means that
code, else the code's class); the gateway turns them into HTTP statuses (`http_status`).
Nothing else should map errors by hand.

Domain errors subclass the class of the status they mean. Those more than one service raises
(InvalidTask, TaskNotFound, SandboxNotFound...) live here, once; a service's own ones
(services/executor/errors.py, services/gui/input.py) derive from these roots.
"""

from __future__ import annotations

from typing import Any, ClassVar

import grpc

# Trailing metadata key carrying the raised class's name, so a client can raise that class again.
ERROR_CLASS_KEY = "corral-error-class"
# Trailing metadata key of a quota refusal: seconds after which trying again may work.
RETRY_AFTER_KEY = "retry-after"


# Every subclass by name (the first one defined wins; the tests check names are unique).
_BY_NAME: dict[str, type[CorralError]] = {}


class CorralError(Exception):
    """Root of every error Corral reports to a caller; the message is for people."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    http_status: ClassVar[int] = 500

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        _BY_NAME.setdefault(cls.__name__, cls)

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """What the call's trailing metadata carries beside the class name."""
        return ()


class InvalidArgument(CorralError, ValueError):
    """The request itself is wrong; the message names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class NotFound(CorralError, LookupError):
    code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class AlreadyExists(CorralError):
    code = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409


class FailedPrecondition(CorralError, RuntimeError):
    """The request is fine but the thing it names is in the wrong state (ended, expired...)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409


class ResourceExhausted(CorralError):
    """A capacity or quota is used up; trying again later may work."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429


class Unavailable(CorralError, ConnectionError):
    """A service (or a sandbox) that the request needs cannot be reached right now."""

    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class DeadlineExceeded(CorralError, TimeoutError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


class PermissionDenied(CorralError, PermissionError):
    code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


class Unauthenticated(CorralError):
    code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class Unimplemented(CorralError, NotImplementedError):
    code = grpc.StatusCode.UNIMPLEMENTED
    http_status = 501


class Internal(CorralError):
    """A bug or an unexpected failure on the server's side."""

    code = grpc.StatusCode.INTERNAL
    http_status = 500


# --- errors more than one service raises (the client may see each by name) ------------------


class InvalidTask(InvalidArgument):
    """The task cannot be run as given; the message names the field, e.g. 'steps[1].shell.command is empty'."""


class TaskNotFound(NotFound):
    pass


class TaskAlreadyFinished(FailedPrecondition):
    pass


class SandboxNotFound(NotFound):
    pass


class SandboxEnded(FailedPrecondition):
    """The sandbox exists but is deleted, expired or failed."""


class SandboxUnavailable(Unavailable):
    """No executor can take (or still has) the sandbox."""


class InvalidSandboxRequest(InvalidArgument):
    pass


class QuotaExceeded(ResourceExhausted):
    """A tenant's quota is used up; the message names the quota, `retry_after` says when to
    try again (HTTP Retry-After; gRPC trailing metadata `retry-after`)."""

    def __init__(self, message: str = "", retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((RETRY_AFTER_KEY, str(self.retry_after)),)


class IdempotencyKeyReused(AlreadyExists):
    """The idempotency key was used (by the same tenant, within its lifetime) for a different
    request, or its first request is still being carried out."""


class CapacityExhausted(ResourceExhausted):
    """The executors can hold no more of something right now (e.g. long-lived sandboxes);
    `retry_after` says when trying again may work (HTTP Retry-After)."""

    def __init__(self, message: str = "", retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((RETRY_AFTER_KEY, str(self.retry_after)),)


_BY_CODE: dict[grpc.StatusCode, type[CorralError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, ResourceExhausted,
        Unavailable, DeadlineExceeded, PermissionDenied, Unauthenticated, Unimplemented, Internal,
    )
}
# Codes without a class of their own, and the class that means the same to a caller.
_BY_CODE[grpc.StatusCode.OUT_OF_RANGE] = InvalidArgument
_BY_CODE[grpc.StatusCode.ABORTED] = FailedPrecondition
_BY_CODE[grpc.StatusCode.CANCELLED] = Unavailable
_BY_CODE[grpc.StatusCode.DATA_LOSS] = Internal
_BY_CODE[grpc.StatusCode.UNKNOWN] = Internal


def error_class(code: grpc.StatusCode) -> type[CorralError]:
    """The class a gRPC status code stands for."""
    return _BY_CODE.get(code, Internal)


def from_status(code: grpc.StatusCode, details: str, class_name: str = "") -> CorralError:
    """The typed error for a failed call's status (what a client raises): the class the server
    raised when this process knows it by `class_name` and it means `code`, else the code's class."""
    base = error_class(code)
    named = _BY_NAME.get(class_name) if class_name else None
    cls = named if named is not None and issubclass(named, base) else base
    return cls(details or code.name.lower())


def from_rpc_error(exc: grpc.aio.AioRpcError) -> CorralError:
    """The typed error for a failed gRPC call (the one function clients use to map them)."""
    class_name = ""
    metadata: Any = exc.trailing_metadata() or ()
    for key, value in metadata:
        if key == ERROR_CLASS_KEY:
            class_name = value if isinstance(value, str) else bytes(value).decode(errors="replace")
    return from_status(exc.code(), exc.details() or "", class_name)


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status the gateway answers for a gRPC status code."""
    return error_class(code).http_status
