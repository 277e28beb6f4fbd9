"""One exception tree for all of Corral, and the one mapping between it and gRPC / HTTP.

Each class is also the builtin it resembles (`NotFound` is a `LookupError`, `DeadlineExceeded`
a `TimeoutError`...), so callers that know nothing of Corral still catch it sensibly. Servers
raise these; `corral.grpc_server`'s interceptor turns them into status codes; the Python client
turns status codes back into the same classes (`from_status`); the gateway turns them into
HTTP statuses (`http_status`). Nothing else should map errors by hand.
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class CorralError(Exception):
    """Root of every error Corral reports to a caller; the message is for people."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    http_status: ClassVar[int] = 500

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


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


def from_status(code: grpc.StatusCode, details: str) -> CorralError:
    """The typed error for a failed call's status (what a client raises)."""
    return error_class(code)(details or code.name.lower())


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status the gateway answers for a gRPC status code."""
    return error_class(code).http_status
