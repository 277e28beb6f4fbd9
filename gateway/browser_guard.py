"""What a web page the user visits must not be able to do through their local gateway.

A gateway without API keys answers anyone who reaches it, and a browser reaches 127.0.0.1 on
behalf of any page it shows. So, before any route runs (HTTP and websockets alike):
- cross-site requests are refused: a state-changing request (or a websocket) whose `Origin` is
  not the gateway's own answers 403 (CSRF, cross-site websocket hijacking);
- a state-changing request with a body must say `Content-Type: application/json`: HTML forms
  and `fetch` without preflight can only send form encodings and text/plain (415 otherwise);
- on a gateway bound to loopback, the `Host` must be a loopback name or address: a page on a
  rebound DNS name (evil.example -> 127.0.0.1) is then refused with 403 (DNS rebinding).
Clients that are not browsers (curl, the SDK, grpc) send no Origin and the JSON type, and pass.
The guard is on in both auth modes. Without keys it is what stands between a web page and the
user's sandboxes; with keys a page cannot send the user's `Authorization` header cross-site
anyway, but the rules cost nothing to clients that are not browsers and still cover the
desktop's cookies, so they stay.
Jupyter Lab's own API (proxied under /v1/sandboxes/{id}/jupyter/) keeps its content types: it
answers only the sandbox's token, which a foreign page has no way to send (its cookie is
SameSite=Strict).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import structlog
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from corral.api_keys import is_loopback
from corral.audit import AuditLog

log = structlog.get_logger()

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
JUPYTER_PATH = re.compile(r"^/v1/sandboxes/[^/]+/jupyter/")
# The sandbox calls that take raw bytes (a file, a tar, stdin): a binary type is no form
# encoding and no text/plain, so a page can send it only after a CORS preflight, which this
# gateway never grants.
RAW_BODY_PATH = re.compile(r"^/v1/sandboxes/[^/]+/(files|files/upload|commands/[^/]+/stdin)$")
RAW_BODY_TYPES = frozenset({
    "application/octet-stream", "application/x-tar", "application/zip", "application/gzip", "application/x-gzip",
})
__all__ = ["BrowserGuard", "is_loopback"]


def host_name(host_header: str) -> str:
    """The name or address in a Host header, without its port."""
    return urlsplit(f"//{host_header}").hostname or ""


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class BrowserGuard:
    """ASGI middleware applying the rules above; `loopback_only` when the gateway binds loopback.
    Each refusal is an `access_refused` line of the audit log at `audit_path` (opened on the
    first one)."""

    def __init__(self, app: ASGIApp, loopback_only: bool, audit_path: Path | None = None) -> None:
        self.app = app
        self.loopback_only = loopback_only
        self.audit_path = audit_path
        self._audit: AuditLog | None = None

    def _record(self, scope: Scope, headers: Headers, code: str, message: str) -> None:
        if self.audit_path is None:
            return
        try:
            if self._audit is None:
                self._audit = AuditLog(self.audit_path)
            client = scope.get("client")
            self._audit.refused(
                f"{scope.get('method', 'WEBSOCKET')} {scope.get('path', '')}",
                f"browser guard: {code}: {message}",
                origin=headers.get("origin"),
                host=headers.get("host"),
                client=f"{client[0]}:{client[1]}" if client else None,
            )
        except OSError as exc:  # the refusal itself stands
            log.warning("cannot write the audit log", path=str(self.audit_path), error=str(exc))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self.refusal(scope, headers)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        self._record(scope, headers, refusal[1], refusal[2])
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": refusal[2][:120]})
        else:
            await _send_error(send, *refusal)

    def refusal(self, scope: Scope, headers: Headers) -> tuple[int, str, str] | None:
        """(status, code, message) when the request is refused, else None."""
        host = headers.get("host", "")
        if self.loopback_only and not is_loopback(host_name(host)):
            return (
                403, "permission_denied",
                f"Host {host!r} is not a loopback name: this gateway listens on loopback only and "
                "answers only localhost or loopback addresses (a rebound DNS name is refused)",
            )
        websocket = scope["type"] == "websocket"
        method = scope.get("method", "GET")
        if not websocket and method in SAFE_METHODS:
            return None
        origin = headers.get("origin")
        if origin is not None and not _same_origin(origin, host, scope):
            return (
                403, "permission_denied",
                f"requests from origin {origin!r} are refused: only this gateway's own pages, or "
                "clients that send no Origin (curl, the SDK), may change state",
            )
        if websocket or JUPYTER_PATH.match(scope.get("path", "")):
            return None
        has_body = headers.get("content-length", "0") != "0" or "chunked" in headers.get("transfer-encoding", "")
        content_type = headers.get("content-type", "")
        raw = RAW_BODY_PATH.match(scope.get("path", "")) and content_type.split(";", 1)[0].strip().lower() in RAW_BODY_TYPES
        if has_body and not is_json(content_type) and not raw:
            return (
                415, "unsupported_media_type",
                f"the request body must be JSON with Content-Type: application/json (got {content_type or 'none'!r})",
            )
        return None


def _same_origin(origin: str, host: str, scope: Scope) -> bool:
    parts = urlsplit(origin)
    if not parts.scheme or not parts.netloc:
        return False  # "null" (sandboxed frames, file: pages) and garbage
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    return parts.scheme.lower() == scheme and parts.netloc.lower() == host.lower()


async def _send_error(send: Send, status: int, code: str, message: str) -> None:
    """The gateway's usual error document (gateway/errors.py) for a refusal."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})
