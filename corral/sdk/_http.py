"""The SDK's wire: where the gateway is, how a call is authenticated, what a failure raises.

Both clients (sync.py, aio.py) send the same `Call`s (built once in calls.py) and read the
answers with the same functions here; only the sending differs (the asyncio client's httpx,
the blocking client's socket in _wire.py). httpx is imported only by the asyncio client.
"""

# No `from __future__ import annotations` here: typing.NamedTuple compiles each field's string
# annotation (a ForwardRef), which cost `corral run` more at its start than its whole parser.

import json
import os
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from corral import errors

if TYPE_CHECKING:
    import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
# Seconds a call may take beyond its own timeout (a command's, a task's) before the client
# gives up on the gateway.
NETWORK_SLACK_SECONDS = 30.0
# A call's default params and headers (read-only, so one shared instance will do).
_NONE: Mapping[str, Any] = MappingProxyType({})

# NamedTuples, not dataclasses: the dataclasses module (inspect, ast...) costs `corral run`
# more to import than the rest of the blocking client does.


class Connection(NamedTuple):
    """The gateway's base URL and the API key sent with every call."""

    url: str
    api_key: str | None

    @classmethod
    def resolve(cls, url: str | None = None, api_key: str | None = None) -> "Connection":
        """Arguments first, then CORRAL_URL / CORRAL_API_KEY, then the embedded default."""
        base = (url or os.environ.get("CORRAL_URL") or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("CORRAL_API_KEY") or None
        return cls(base, key)

    @property
    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": "corral-sdk"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


class Call(NamedTuple):
    """One HTTP request, as both clients send it."""

    method: str
    path: str
    params: Mapping[str, Any] = _NONE
    json: Any = None
    content: bytes | None = None
    headers: Mapping[str, str] = _NONE
    # Seconds to wait for the answer (None: the client's default).
    timeout: float | None = None

    def request_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"params": {k: v for k, v in self.params.items() if v is not None}}
        if self.json is not None:
            args["json"] = self.json
        if self.content is not None:
            args["content"] = self.content
        if self.headers:
            args["headers"] = dict(self.headers)
        if self.timeout is not None:
            args["timeout"] = self.timeout
        return args


_BY_STATUS: dict[int, type[errors.CorralError]] = {
    400: errors.InvalidArgument,
    401: errors.Unauthenticated,
    403: errors.PermissionDenied,
    404: errors.NotFound,
    409: errors.FailedPrecondition,
    413: errors.InvalidArgument,
    415: errors.InvalidArgument,
    422: errors.InvalidArgument,
    429: errors.ResourceExhausted,
    501: errors.Unimplemented,
    503: errors.Unavailable,
    504: errors.DeadlineExceeded,
}


def error_for(status: int, body: bytes, headers: Mapping[str, str]) -> errors.CorralError:
    """The typed error of a failed answer: its class from the status, its words from the
    gateway's {"error": {"code", "message"}} body."""
    message = body.decode(errors="replace")[:2000] or f"HTTP {status}"
    code = ""
    try:
        error = json.loads(body).get("error", {})
        message, code = str(error.get("message") or message), str(error.get("code") or "")
    except (ValueError, AttributeError):
        pass
    if status == 429:
        retry_after = headers.get("retry-after", "1")
        quota = errors.QuotaExceeded(message, int(retry_after) if retry_after.isdigit() else 1)
        return quota
    if status == 409 and code == "already_exists":
        return errors.AlreadyExists(message)
    cls = _BY_STATUS.get(status, errors.Unavailable if status >= 500 else errors.InvalidArgument)
    if status >= 500 and status not in _BY_STATUS:
        cls = errors.Internal
    return cls(message)


def error_event(data: Mapping[str, Any]) -> errors.CorralError:
    """The typed error of a stream's `error` event ({"error": {"code", "message"}})."""
    error = data.get("error", data)
    code = str(error.get("code", "")) if isinstance(error, Mapping) else ""
    message = str(error.get("message", "")) if isinstance(error, Mapping) else str(error)
    status = next((s for s, name in _HTTP_CODES.items() if name == code), 502)
    return error_for(status, json.dumps({"error": {"code": code, "message": message}}).encode(), {})


# The gateway's machine codes (gateway/errors.py HTTP_CODES), for errors inside a stream.
_HTTP_CODES = {
    400: "bad_request", 401: "unauthenticated", 403: "permission_denied", 404: "not_found",
    409: "conflict", 413: "payload_too_large", 429: "resource_exhausted", 501: "unimplemented",
    503: "unavailable", 504: "deadline_exceeded",
}


def check(response: "httpx.Response") -> "httpx.Response":
    if response.status_code >= 400:
        response.read()
        raise error_for(response.status_code, response.content, response.headers)
    return response


def transport_error(exc: "httpx.HTTPError", connection: Connection) -> errors.CorralError:
    """A call that never got an answer: the gateway is unreachable or too slow."""
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return errors.DeadlineExceeded(f"no answer from Corral at {connection.url} in time ({exc})")
    return errors.Unavailable(f"cannot reach Corral at {connection.url}: {exc}")


class SseEvent(NamedTuple):
    event: str
    data: dict[str, Any]


class SseParser:
    """Server-Sent Events from lines (the gateway's task events and command output)."""

    def __init__(self) -> None:
        self._event = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> Iterator[SseEvent]:
        if line == "":
            if self._data:
                text = "\n".join(self._data)
                try:
                    data = json.loads(text)
                except ValueError:
                    data = {"text": text}
                yield SseEvent(self._event, data if isinstance(data, dict) else {"value": data})
            self._event, self._data = "message", []
        elif line.startswith(":"):
            return
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                self._event = value
            elif name == "data":
                self._data.append(value)
