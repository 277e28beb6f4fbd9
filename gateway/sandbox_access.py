"""Who may see a sandbox's desktop and Jupyter: the sandbox's token, checked on every request.

The token comes as `?token=` (first visit, e.g. a link), then as a cookie scoped to the
sandbox's path (set on that visit, so the pages' own requests and websockets carry it), or as
`Authorization: Bearer`. The full token gives control; the view token only a view-only desktop. The owner's API key
(or an admin's), as `Authorization: Bearer`, opens it as the full token does.
Missing token: 401; wrong token: 403. The scheduler checks the token
(corral.internal.v1.SandboxAccessService): the gateway never sees the tokens' hashes, and
learns which executor holds the sandbox (whose relay carries its desktop's and Jupyter's
bytes, gateway/sandbox_relay.py) only for a valid token.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection

from corral.internal.v1 import sandbox_access_pb2
from corral.v1 import sandbox_pb2
from corral.views import SANDBOX_STATE_NAMES
from gateway.auth import forwarded
from gateway.backends import upstream
from gateway.errors import ApiError

if TYPE_CHECKING:
    from gateway.deps import SandboxStubs

COOKIE_PREFIX = "corral_sandbox_"


class Access(Enum):
    FULL = "full"
    VIEW = "view"


ACCESS = {
    sandbox_access_pb2.SANDBOX_ACCESS_FULL: Access.FULL,
    sandbox_access_pb2.SANDBOX_ACCESS_VIEW: Access.VIEW,
}


@dataclass(frozen=True)
class Grant:
    sandbox: sandbox_pb2.Sandbox
    access: Access
    token: str
    # True when the token came in the query: the caller sets the cookie and drops it from URLs.
    from_query: bool
    # The executor holding the sandbox (host:port): its SandboxRelayService reaches the sockets.
    executor_address: str


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


async def authorize(conn: HTTPConnection, stubs: SandboxStubs, sandbox_id: str) -> Grant:
    """The access the presented token gives to the active sandbox `sandbox_id`.

    404 unknown sandbox, 409 ended, 401 no token, 403 wrong token -- in that order.
    """
    token, from_query = presented_token(conn, sandbox_id)
    async with upstream("scheduler"):
        reply = await stubs.access.AuthorizeSandboxAccess(
            sandbox_access_pb2.AuthorizeSandboxAccessRequest(sandbox_id=sandbox_id, token=token),
            metadata=forwarded(conn),
            timeout=stubs.timeout,
        )
    sandbox = reply.sandbox
    if sandbox.state != sandbox_pb2.SANDBOX_STATE_ACTIVE:
        raise ApiError(409, "failed_precondition", f"sandbox {sandbox_id} is {SANDBOX_STATE_NAMES.get(sandbox.state)}")
    if not token:
        raise ApiError(
            401, "unauthenticated",
            "this sandbox needs its access token: add ?token=... or an Authorization: Bearer header",
            headers={"WWW-Authenticate": 'Bearer realm="corral"'},
        )
    access = ACCESS.get(reply.access)
    if access is None:
        raise ApiError(403, "permission_denied", "wrong token for this sandbox")
    if not reply.executor_address:
        raise ApiError(503, "unavailable", f"the executor of sandbox {sandbox_id} is not connected")
    return Grant(sandbox, access, token, from_query, reply.executor_address)
