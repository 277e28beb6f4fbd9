"""One exception tree for all of Corral, for servers and clients alike.

Each class is also the builtin it resembles (`NotFound` is a `LookupError`, `DeadlineExceeded`
a `TimeoutError`...), so callers that know nothing of Corral still catch it sensibly. Each class
names the gRPC status code it stands for (`code`, the code's name) and the HTTP status the
gateway answers with (`http_status`). This module imports nothing but the standard library: the
SDK and the CLI use it without grpc. The mapping to and from gRPC statuses lives beside the
servers, in corral.grpc_errors (the interceptor in corral.grpc_server, from_rpc_error for
clients of the services); the SDK maps HTTP answers back (corral.sdk._http). Nothing else should
map errors by hand.

Domain errors subclass the class of the status they mean. Those more than one service raises
(InvalidTask, TaskNotFound, SandboxNotFound...) live here, once; a service's own ones
(services/executor/errors.py, services/gui/input.py) derive from these roots.
"""

from __future__ import annotations

from typing import ClassVar

# Trailing metadata key carrying the raised class's name, so a client can raise that class again.
ERROR_CLASS_KEY = "corral-error-class"
# Trailing metadata key of a quota refusal: seconds after which trying again may work.
RETRY_AFTER_KEY = "retry-after"


# Every subclass by name (the first one defined wins; the tests check names are unique).
_BY_NAME: dict[str, type[CorralError]] = {}


class CorralError(Exception):
    """Root of every error Corral reports to a caller; the message is for people."""

    # The name of the gRPC status code it stands for (grpc.StatusCode[code]).
    code: ClassVar[str] = "UNKNOWN"
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

    code = "INVALID_ARGUMENT"
    http_status = 400


class NotFound(CorralError, LookupError):
    code = "NOT_FOUND"
    http_status = 404


class AlreadyExists(CorralError):
    code = "ALREADY_EXISTS"
    http_status = 409


class FailedPrecondition(CorralError, RuntimeError):
    """The request is fine but the thing it names is in the wrong state (ended, expired...)."""

    code = "FAILED_PRECONDITION"
    http_status = 409


class ResourceExhausted(CorralError):
    """A capacity or quota is used up; trying again later may work."""

    code = "RESOURCE_EXHAUSTED"
    http_status = 429


class Unavailable(CorralError, ConnectionError):
    """A service (or a sandbox) that the request needs cannot be reached right now."""

    code = "UNAVAILABLE"
    http_status = 503


class DeadlineExceeded(CorralError, TimeoutError):
    code = "DEADLINE_EXCEEDED"
    http_status = 504


class PermissionDenied(CorralError, PermissionError):
    code = "PERMISSION_DENIED"
    http_status = 403


class Unauthenticated(CorralError):
    code = "UNAUTHENTICATED"
    http_status = 401


class Unimplemented(CorralError, NotImplementedError):
    code = "UNIMPLEMENTED"
    http_status = 501


class Internal(CorralError):
    """A bug or an unexpected failure on the server's side."""

    code = "INTERNAL"
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


def by_name(class_name: str) -> type[CorralError] | None:
    """The class called `class_name`, if this process knows it."""
    return _BY_NAME.get(class_name)
