"""Every error the gateway returns is JSON: {"error": {"code": "...", "message": "..."}}.

Validation messages name the field path the way a person would write it ("steps[1].command").
HTTP statuses come from corral.errors, the one mapping: a CorralError raised in the gateway
answers its class's `http_status`; a failed call to a service (grpc.aio.AioRpcError) answers
the status of its code's class, naming the service when it is unreachable or broken.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.errors import RETRY_AFTER_KEY, CorralError, Internal
from corral.grpc_errors import error_class
from corral.steps import TOOL_NAMES as TOOLS
from corral.steps.gui import ACTIONS as GUI_ACTIONS

log = structlog.get_logger()

# A service's own failure (INTERNAL, UNKNOWN, DATA_LOSS...) is, to an HTTP client, a bad gateway.
UPSTREAM_FAILED_STATUS = 502

HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "resource_exhausted",
    500: "internal",
    501: "unimplemented",
    502: "bad_gateway",
    503: "unavailable",
    504: "deadline_exceeded",
}


class ApiError(Exception):
    """An error with the HTTP status, machine code and human message the client will see."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def error_body(code: str, message: str, details: list[dict[str, str]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(error.code, error.message, error.details), status_code=error.status, headers=error.headers
    )


def from_corral_error(exc: CorralError) -> ApiError:
    """The HTTP face of a CorralError raised in the gateway: its class's status, its code's name."""
    return ApiError(
        exc.http_status, exc.code.lower(), exc.message or exc.code.lower(),
        headers=_headers(exc.http_status, dict(exc.trailing_metadata())),
    )


def _headers(status: int, trailing: dict[str, str]) -> dict[str, str] | None:
    """401 says how to authenticate (RFC 6750); a quota's 429 when to try again."""
    if status == 401:
        return {"WWW-Authenticate": 'Bearer realm="corral"'}
    if status == 429 and trailing.get(RETRY_AFTER_KEY, "").isdigit():
        return {"Retry-After": trailing[RETRY_AFTER_KEY]}
    return None


def _trailing(exc: grpc.aio.AioRpcError) -> dict[str, str]:
    metadata: Any = exc.trailing_metadata() or ()
    return {key: value if isinstance(value, str) else bytes(value).decode(errors="replace") for key, value in metadata}


def from_rpc_error(exc: grpc.aio.AioRpcError, service: str) -> ApiError:
    """The HTTP face of a failed gRPC call to `service` (scheduler or memory): the status of
    its code's corral.errors class, but 502 for the service's own failures."""
    code = exc.code()
    cls = error_class(code)
    details = exc.details() or code.name.lower()
    status = cls.http_status
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        message = f"{service} is not reachable: {details}"
    elif issubclass(cls, Internal):
        status, message = UPSTREAM_FAILED_STATUS, f"{service} failed: {details}"
    else:
        message = details
    return ApiError(status, code.name.lower(), message, headers=_headers(status, _trailing(exc)))


def field_path(loc: Sequence[int | str]) -> str:
    """('steps', 1, 'gui', 'click', 'x') -> 'steps[1].x' (drops the unions' tag names)."""
    path = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(previous, int) and part in TOOLS:
            pass  # pydantic puts the discriminator's value in the path; people don't
        elif previous == "gui" and part in GUI_ACTIONS:
            pass  # the same for a gui step's `action`
        else:
            path += f".{part}" if path else part
        previous = part
    return path


def describe_validation_error(error: dict[str, Any]) -> dict[str, str]:
    """One pydantic error as {"field": ..., "message": ...} in plain words."""
    loc = list(error.get("loc", ()))
    if loc and loc[0] == "body":
        loc = loc[1:]
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    # Which discriminated union: a step's `tool`, or a gui step's `action`.
    tag = str(ctx.get("discriminator", "'tool'")).strip("'")
    expected = ", ".join(GUI_ACTIONS if tag == "action" else TOOLS)
    what = "gui action" if tag == "action" else "tool"
    if kind == "union_tag_invalid":
        message = f"unknown {what} {ctx.get('tag')!r} (expected one of {expected})"
        if tag == "action":
            loc = [*loc, tag]
    elif kind == "union_tag_not_found":
        loc = [*loc, tag]
        message = f"field required (one of {expected})"
    elif kind == "missing":
        message = "field required"
    elif kind == "extra_forbidden":
        message = "unknown field"
    elif kind == "value_error" and isinstance(ctx.get("error"), ValueError):
        message = str(ctx["error"])
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        message = "must be a JSON object"
    else:
        text = str(error.get("msg", "invalid value"))
        message = text[:1].lower() + text[1:]
    if loc and loc[0] in ("query", "path", "header"):
        where = f"{loc[1]} ({loc[0]} parameter)" if len(loc) > 1 else str(loc[0])
    else:
        where = field_path(loc) or "body"
    return {"field": where, "message": message}


def validation_error(errors: Sequence[Any], prefix: str = "") -> ApiError:
    details = [describe_validation_error(dict(e)) for e in errors]
    message = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return ApiError(400, "invalid_argument", prefix + message, details)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "error")
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(CorralError)
    async def _corral_error(_: Request, exc: CorralError) -> JSONResponse:
        return error_response(from_corral_error(exc))

    @app.exception_handler(grpc.aio.AioRpcError)
    async def _rpc_error(_: Request, exc: grpc.aio.AioRpcError) -> JSONResponse:
        return error_response(from_rpc_error(exc, "upstream service"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Last resort: log the trace for operators, give the client JSON and no stack trace.
        log.error("unhandled error", path=request.url.path, exc_info=exc)
        return JSONResponse(error_body("internal", "internal error in the gateway"), status_code=500)
