"""corral.errors over gRPC: the one mapping between the error tree and gRPC status codes.

Servers raise corral.errors classes; corral.grpc_server's interceptor ends the call with
`status_code(exc)` (and names the class in the call's trailing metadata); a client of the
services turns a failed call back into the same class (`from_rpc_error`: the named class when
this process knows it and it means that code, else the code's class); the gateway answers
`http_status(code)`. Kept apart from corral.errors so that the SDK and the CLI never import grpc.
"""

from __future__ import annotations

from typing import Any

import grpc

from corral.errors import (
    ERROR_CLASS_KEY,
    AlreadyExists,
    CorralError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    by_name,
)

_BY_CODE: dict[grpc.StatusCode, type[CorralError]] = {
    grpc.StatusCode[cls.code]: cls
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


def status_code(error: CorralError | type[CorralError]) -> grpc.StatusCode:
    """The gRPC status code an error (or error class) stands for."""
    return grpc.StatusCode[error.code]


def error_class(code: grpc.StatusCode) -> type[CorralError]:
    """The class a gRPC status code stands for."""
    return _BY_CODE.get(code, Internal)


def from_status(code: grpc.StatusCode, details: str, class_name: str = "") -> CorralError:
    """The typed error for a failed call's status (what a client raises): the class the server
    raised when this process knows it by `class_name` and it means `code`, else the code's class."""
    base = error_class(code)
    named = by_name(class_name) if class_name else None
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
