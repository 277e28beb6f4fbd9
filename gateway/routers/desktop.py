"""A long-lived sandbox's noVNC desktop (/vnc/) and Jupyter Lab (/jupyter/), behind its token.

The sockets behind them are files in the sandbox's run directory on the executor's host. The
gateway shares no filesystem with the executor: for a valid token the scheduler names the
executor holding the sandbox (gateway/sandbox_access.py), and the bytes go through that
executor's relay stream (gateway/sandbox_relay.py), the executor opening the socket through a
checked descriptor (the sandbox can write its run directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, WebSocket
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.websockets import WebSocketDisconnect

from corral.api_keys import metadata_for
from corral.internal.v1 import sandbox_access_pb2
from gateway.backends import upstream
from gateway.deps import JupyterDep, RelayDep, SandboxStubs, SandboxStubsDep, SettingsDep
from gateway.errors import ApiError
from gateway.jupyter_proxy import JupyterProxy
from gateway.sandbox_access import Access, Grant, authorize, cookie_name, cookie_path
from gateway.sandbox_relay import VNC, VNC_VIEW, RelayFailed, RelayStream
from gateway.views import UPSTREAM, errors

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}")

VNC_READ_BYTES = 256 * 1024
JUPYTER_START_TIMEOUT_SECONDS = 180.0
JUPYTER_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
ACCESS_ERRORS = (401, 403, 404, 409, *UPSTREAM)
WORDING = {"e404": "Unknown sandbox.", "e409": "The sandbox has ended (or has no desktop)."}


def with_cookie(response: Response, grant: Grant) -> Response:
    if grant.from_query:
        sandbox_id = grant.sandbox.sandbox_id
        response.set_cookie(
            cookie_name(sandbox_id), grant.token, path=cookie_path(sandbox_id), httponly=True, samesite="strict"
        )
    return response


# --- noVNC --------------------------------------------------------------------------------


@router.get(
    "/vnc/",
    tags=["desktop"],
    name="vnc_page",
    summary="The sandbox's desktop in noVNC",
    status_code=303,
    response_class=RedirectResponse,
    responses={
        303: {"description": "To the noVNC page, connected to this sandbox (sets the token cookie)."},
        **errors(400, *ACCESS_ERRORS, **WORDING, e400="view_only is not a boolean."),
    },
)
async def vnc_page(
    request: Request,
    sandbox_id: str,
    stubs: SandboxStubsDep,
    view_only: Annotated[bool, Query(description="Watch without control.")] = False,
) -> Response:
    grant = await authorize(request, stubs, sandbox_id)
    if not grant.sandbox.spec.desktop:
        raise ApiError(409, "failed_precondition", f"sandbox {sandbox_id} has no desktop")
    view = view_only or grant.access == Access.VIEW
    ws_path = f"v1/sandboxes/{sandbox_id}/vnc/websockify" + ("?view_only=1" if view else "")
    target = (
        f"/v1/sandboxes/{sandbox_id}/vnc/vnc.html?autoconnect=1&reconnect=1&resize=scale"
        f"&view_only={'1' if view else '0'}&path={quote(ws_path, safe='')}"
    )
    return with_cookie(RedirectResponse(target, status_code=303), grant)


@router.websocket("/vnc/websockify")
async def vnc_socket(websocket: WebSocket, sandbox_id: str, stubs: SandboxStubsDep, relay: RelayDep) -> None:
    try:
        grant = await authorize(websocket, stubs, sandbox_id)
    except ApiError as exc:
        await websocket.close(code=4000 + exc.status, reason=exc.message[:120])
        return
    view = grant.access == Access.VIEW or websocket.query_params.get("view_only") in ("1", "true")
    try:
        stream = await relay.open(grant.executor_address, sandbox_id, VNC_VIEW if view else VNC)
    except RelayFailed as exc:
        # Accepted first, so the client sees why (a close before accepting is a bare 403).
        await websocket.accept()
        await websocket.close(code=1011, reason=f"the desktop is not reachable: {exc.message}"[:120])
        return
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol="binary" if "binary" in offered else None)
    await _pump_vnc(websocket, stream)


@router.get("/vnc/{path:path}", name="vnc_files", include_in_schema=False)
async def vnc_files(
    request: Request, sandbox_id: str, path: str, stubs: SandboxStubsDep, settings: SettingsDep
) -> Response:
    grant = await authorize(request, stubs, sandbox_id)
    novnc_dir = settings.novnc_dir.resolve()
    target = (novnc_dir / path).resolve()
    if not target.is_relative_to(novnc_dir) or not target.is_file():
        raise ApiError(404, "not_found", f"no file {path!r} in the noVNC client")
    media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if target.suffix == ".js":
        media_type = "text/javascript"  # ES modules need a JavaScript type
    return with_cookie(FileResponse(target, media_type=media_type), grant)


async def _pump_vnc(websocket: WebSocket, stream: RelayStream) -> None:
    """Bytes both ways between the browser's websocket and x11vnc (websockify's job)."""

    async def to_browser() -> None:
        while data := await stream.read(VNC_READ_BYTES):
            await websocket.send_bytes(data)

    async def to_vnc() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            await stream.write(message.get("bytes") or (message.get("text") or "").encode())

    tasks = [asyncio.create_task(to_browser()), asyncio.create_task(to_vnc())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, Exception):
                await task
        await stream.aclose()
        with contextlib.suppress(Exception):
            await websocket.close()


# --- Jupyter Lab --------------------------------------------------------------------------


async def full_access(conn: Request | WebSocket, stubs: SandboxStubs, sandbox_id: str) -> Grant:
    grant = await authorize(conn, stubs, sandbox_id)
    if grant.access != Access.FULL:
        raise ApiError(403, "permission_denied", "the view-only token does not open Jupyter")
    return grant


async def ensure_jupyter(stubs: SandboxStubs, jupyter: JupyterProxy, grant: Grant) -> None:
    """Starts Jupyter when nothing answers on its socket."""
    if await jupyter.answers(grant):
        return
    sandbox_id = grant.sandbox.sandbox_id
    async with upstream("scheduler"):
        await stubs.access.OpenJupyter(
            sandbox_access_pb2.OpenJupyterRequest(
                sandbox_id=sandbox_id, base_url=f"/v1/sandboxes/{sandbox_id}/jupyter/", token=grant.token
            ),
            # The grant's token may be the owner's API key, which the scheduler reads from here.
            metadata=metadata_for(grant.token),
            timeout=JUPYTER_START_TIMEOUT_SECONDS,
        )


async def jupyter_http(
    request: Request, sandbox_id: str, path: str, stubs: SandboxStubsDep, jupyter: JupyterDep
) -> Response:
    grant = await full_access(request, stubs, sandbox_id)
    await ensure_jupyter(stubs, jupyter, grant)
    return with_cookie(await jupyter.forward(request, grant), grant)


JUPYTER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Whatever Jupyter Lab answers (any status and content type)."},
    **errors(*ACCESS_ERRORS, e403="The token is wrong, or it is the view-only token.", e404="Unknown sandbox.",
             e409="The sandbox has ended.", e502="Jupyter in the sandbox did not answer."),
}
# One route per method, so each operation has its own id.
for _method in JUPYTER_METHODS:
    router.add_api_route(
        "/jupyter/{path:path}",
        jupyter_http,
        methods=[_method],
        name=f"jupyter_{_method.lower()}",
        tags=["jupyter"],
        summary="Jupyter Lab in the sandbox (started on first use), proxied",
        response_class=Response,
        responses=JUPYTER_RESPONSES,
    )


@router.websocket("/jupyter/{path:path}")
async def jupyter_ws(
    websocket: WebSocket, sandbox_id: str, path: str, stubs: SandboxStubsDep, jupyter: JupyterDep
) -> None:
    try:
        grant = await full_access(websocket, stubs, sandbox_id)
        await ensure_jupyter(stubs, jupyter, grant)
    except ApiError as exc:
        await websocket.close(code=4000 + exc.status, reason=exc.message[:120])
        return
    await jupyter.forward_websocket(websocket, grant)
