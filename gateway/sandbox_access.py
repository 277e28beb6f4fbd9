"""Who may see a sandbox's desktop and Jupyter: the sandbox's token, checked on every request.

The token comes as `?token=` (first visit, e.g. a link), then as a cookie scoped to the
sandbox's path (set on that visit, so the pages' own requests and websockets carry it), or as
`Authorization: Bearer`. The full token gives control; the view token only a view-only desktop.
Missing token: 401; wrong token: 403.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import Enum

from starlette.requests import HTTPConnection

from corral.v1 import sandbox_pb2
from gateway.errors import ApiError

COOKIE_PREFIX = "corral_sandbox_"


class Access(Enum):
    FULL = "full"
    VIEW = "view"


@dataclass(frozen=True)
class Grant:
    access: Access
    token: str
    # True when the token came in the query: the caller sets the cookie and drops it from URLs.
    from_query: bool


def cookie_name(sandbox_id: str) -> str:
    return COOKIE_PREFIX + sandbox_id


def cookie_path(sandbox_id: str) -> str:
    return f"/v1/sandboxes/{sandbox_id}/"


def presented_token(conn: HTTPConnection, sandbox_id: str) -> tuple[str, bool]:
    token = conn.query_params.get("token", "")
    if token:
        return token, True
    header = conn.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip(), False
    return conn.cookies.get(cookie_name(sandbox_id), ""), False


def _matches(token: str, expected_sha256: str) -> bool:
    digest = hashlib.sha256(token.encode()).hexdigest()
    return bool(expected_sha256) and hmac.compare_digest(digest, expected_sha256)


def authorize(conn: HTTPConnection, sandbox: sandbox_pb2.Sandbox) -> Grant:
    token, from_query = presented_token(conn, sandbox.sandbox_id)
    if not token:
        raise ApiError(
            401, "unauthenticated",
            "this sandbox needs its access token: add ?token=... or an Authorization: Bearer header",
        )
    if _matches(token, sandbox.token_sha256):
        return Grant(Access.FULL, token, from_query)
    if _matches(token, sandbox.view_token_sha256):
        return Grant(Access.VIEW, token, from_query)
    raise ApiError(403, "permission_denied", "wrong token for this sandbox")
