"""/v1/sandboxes: long-lived sandboxes (create, list, get, extend, delete), and each one's
noVNC desktop (/vnc/) and Jupyter Lab (/jupyter/) behind its token.

The sockets behind the desktop and Jupyter are files in the sandbox's run directory on the
executor's host; the gateway runs beside the executor (embedded mode) or shares its data
volume (compose), so it reaches them on the filesystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, Query, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.websockets import WebSocketDisconnect

from corral.config import Settings
from corral.schema import LimitsModel, seconds_to_duration
from corral.v1 import sandbox_pb2, sandbox_pb2_grpc, task_pb2
from gateway.backends import Backends, upstream
from gateway.errors import ApiError, validation_error
from gateway.jupyter_proxy import JupyterProxy
from gateway.sandbox_access import Access, Grant, authorize, cookie_name, cookie_path
from gateway.views import ERROR_RESPONSES

STATE_NAMES = {
    sandbox_pb2.SANDBOX_STATE_UNSPECIFIED: "unspecified",
    sandbox_pb2.SANDBOX_STATE_ACTIVE: "active",
    sandbox_pb2.SANDBOX_STATE_DELETED: "deleted",
    sandbox_pb2.SANDBOX_STATE_EXPIRED: "expired",
    sandbox_pb2.SANDBOX_STATE_FAILED: "failed",
}
VNC_READ_BYTES = 256 * 1024


class SandboxRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    desktop: bool = Field(False, description="Start a desktop (Xvfb, window manager, VNC, gui service).")
    network: bool = Field(False, description="Give the sandbox network access.")
    limits: LimitsModel | None = None
    ttl: float | None = Field(None, gt=0, description="Seconds it lives unless extended (default 3600).")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")

    def to_proto(self) -> sandbox_pb2.SandboxSpec:
        spec = sandbox_pb2.SandboxSpec(desktop=self.desktop, network=self.network, env=self.env)
        if self.limits is not None:
            spec.limits.CopyFrom(task_pb2.Limits(**self.limits.model_dump()))
        if self.ttl is not None:
            spec.ttl.CopyFrom(seconds_to_duration(self.ttl))
        return spec


class ExtendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl: float | None = Field(None, gt=0, description="New lifetime from now, seconds (default: its ttl).")


def sandbox_to_json(sandbox: sandbox_pb2.Sandbox) -> dict[str, Any]:
    base = f"/v1/sandboxes/{sandbox.sandbox_id}"
    return {
        "sandbox_id": sandbox.sandbox_id,
        "status": STATE_NAMES.get(sandbox.state, "unspecified"),
        "desktop": sandbox.spec.desktop,
        "network": sandbox.spec.network,
        "ttl_seconds": sandbox.spec.ttl.ToNanoseconds() / 1e9,
        "executor_id": sandbox.executor_id or None,
        "created_at": sandbox.created_at.ToJsonString() if sandbox.HasField("created_at") else None,
        "expires_at": sandbox.expires_at.ToJsonString() if sandbox.HasField("expires_at") else None,
        "error": sandbox.error or None,
        "vnc_path": f"{base}/vnc/" if sandbox.spec.desktop else None,
        "jupyter_path": f"{base}/jupyter/",
    }


async def _body(request: Request, model: type[BaseModel]) -> Any:
    raw = await request.body()
    if not raw.strip():
        return model()  # every field has a default
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


def install_sandbox_routes(app: FastAPI, settings: Settings) -> None:
    novnc_dir = settings.novnc_dir.resolve()
    jupyter = JupyterProxy()

    def stub(conn: Request | WebSocket) -> tuple[sandbox_pb2_grpc.SandboxServiceAsyncStub, float]:
        backends: Backends = conn.app.state.backends
        return sandbox_pb2_grpc.SandboxServiceStub(backends.scheduler_channel), backends.timeout

    async def fetch(conn: Request | WebSocket, sandbox_id: str) -> sandbox_pb2.Sandbox:
        sandboxes, timeout = stub(conn)
        async with upstream("scheduler"):
            reply = await sandboxes.GetSandbox(sandbox_pb2.GetSandboxRequest(sandbox_id=sandbox_id), timeout=timeout)
        return reply.sandbox

    async def active(conn: Request | WebSocket, sandbox_id: str) -> sandbox_pb2.Sandbox:
        sandbox = await fetch(conn, sandbox_id)
        if sandbox.state != sandbox_pb2.SANDBOX_STATE_ACTIVE:
            raise ApiError(409, "failed_precondition", f"sandbox {sandbox_id} is {STATE_NAMES.get(sandbox.state)}")
        return sandbox

    # --- the API --------------------------------------------------------------------------

    @app.post("/v1/sandboxes", tags=["sandboxes"], summary="Create a long-lived sandbox", status_code=201,
              responses=ERROR_RESPONSES)
    async def create_sandbox(request: Request) -> JSONResponse:
        body: SandboxRequest = await _body(request, SandboxRequest)
        sandboxes, _ = stub(request)
        async with upstream("scheduler"):
            reply = await sandboxes.CreateSandbox(
                sandbox_pb2.CreateSandboxRequest(spec=body.to_proto()), timeout=180
            )
        data = sandbox_to_json(reply.sandbox)
        base = f"/v1/sandboxes/{reply.sandbox.sandbox_id}"
        data.update(token=reply.token, view_token=reply.view_token,
                    jupyter_url=f"{base}/jupyter/?token={reply.token}")
        if reply.sandbox.spec.desktop:
            data.update(vnc_url=f"{base}/vnc/?token={reply.token}",
                        vnc_view_url=f"{base}/vnc/?token={reply.view_token}")
        return JSONResponse(data, status_code=201, headers={"Location": base})

    @app.get("/v1/sandboxes", tags=["sandboxes"], summary="List sandboxes", responses=ERROR_RESPONSES)
    async def list_sandboxes(
        request: Request,
        include_ended: Annotated[bool, Query(description="Also deleted and expired ones.")] = False,
    ) -> JSONResponse:
        sandboxes, timeout = stub(request)
        async with upstream("scheduler"):
            reply = await sandboxes.ListSandboxes(
                sandbox_pb2.ListSandboxesRequest(include_ended=include_ended), timeout=timeout
            )
        return JSONResponse({"sandboxes": [sandbox_to_json(s) for s in reply.sandboxes]})

    @app.get("/v1/sandboxes/{sandbox_id}", tags=["sandboxes"], summary="Get a sandbox", responses=ERROR_RESPONSES)
    async def get_sandbox(request: Request, sandbox_id: str) -> JSONResponse:
        return JSONResponse(sandbox_to_json(await fetch(request, sandbox_id)))

    @app.post("/v1/sandboxes/{sandbox_id}/extend", tags=["sandboxes"],
              summary="Extend a sandbox's lifetime (to now + ttl)", responses=ERROR_RESPONSES)
    async def extend_sandbox(request: Request, sandbox_id: str) -> JSONResponse:
        body: ExtendRequest = await _body(request, ExtendRequest)
        message = sandbox_pb2.ExtendSandboxRequest(sandbox_id=sandbox_id)
        if body.ttl is not None:
            message.ttl.CopyFrom(seconds_to_duration(body.ttl))
        sandboxes, timeout = stub(request)
        async with upstream("scheduler"):
            reply = await sandboxes.ExtendSandbox(message, timeout=timeout)
        return JSONResponse(sandbox_to_json(reply.sandbox))

    @app.delete("/v1/sandboxes/{sandbox_id}", tags=["sandboxes"],
                summary="Delete a sandbox (kills everything in it)", responses=ERROR_RESPONSES)
    async def delete_sandbox(request: Request, sandbox_id: str) -> JSONResponse:
        sandboxes, timeout = stub(request)
        async with upstream("scheduler"):
            reply = await sandboxes.DeleteSandbox(
                sandbox_pb2.DeleteSandboxRequest(sandbox_id=sandbox_id), timeout=timeout
            )
        return JSONResponse(sandbox_to_json(reply.sandbox))

    # --- noVNC ----------------------------------------------------------------------------

    def with_cookie(response: Response, sandbox_id: str, grant: Grant) -> Response:
        if grant.from_query:
            response.set_cookie(
                cookie_name(sandbox_id), grant.token, path=cookie_path(sandbox_id),
                httponly=True, samesite="strict",
            )
        return response

    @app.get("/v1/sandboxes/{sandbox_id}/vnc/", tags=["desktop"], summary="The sandbox's desktop in noVNC",
             responses=ERROR_RESPONSES)
    async def vnc_page(
        request: Request,
        sandbox_id: str,
        view_only: Annotated[bool, Query(description="Watch without control.")] = False,
    ) -> Response:
        sandbox = await active(request, sandbox_id)
        grant = authorize(request, sandbox)
        if not sandbox.spec.desktop:
            raise ApiError(409, "failed_precondition", f"sandbox {sandbox_id} has no desktop")
        view = view_only or grant.access == Access.VIEW
        ws_path = f"v1/sandboxes/{sandbox_id}/vnc/websockify" + ("?view_only=1" if view else "")
        target = (
            f"/v1/sandboxes/{sandbox_id}/vnc/vnc.html?autoconnect=1&reconnect=1&resize=scale"
            f"&view_only={'1' if view else '0'}&path={quote(ws_path, safe='')}"
        )
        return with_cookie(RedirectResponse(target, status_code=303), sandbox_id, grant)

    @app.websocket("/v1/sandboxes/{sandbox_id}/vnc/websockify")
    async def vnc_socket(websocket: WebSocket, sandbox_id: str) -> None:
        try:
            sandbox = await active(websocket, sandbox_id)
            grant = authorize(websocket, sandbox)
        except ApiError as exc:
            await websocket.close(code=4000 + exc.status, reason=exc.message[:120])
            return
        view = grant.access == Access.VIEW or websocket.query_params.get("view_only") in ("1", "true")
        socket_path = Path(sandbox.host_run_dir) / ("vnc-view.sock" if view else "vnc.sock")
        try:
            reader, writer = await asyncio.open_unix_connection(str(socket_path))
        except OSError as exc:
            await websocket.close(code=1011, reason=f"the desktop is not reachable: {exc.strerror}")
            return
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol="binary" if "binary" in offered else None)
        await _pump_vnc(websocket, reader, writer)

    @app.get("/v1/sandboxes/{sandbox_id}/vnc/{path:path}", tags=["desktop"], include_in_schema=False)
    async def vnc_files(request: Request, sandbox_id: str, path: str) -> Response:
        sandbox = await active(request, sandbox_id)
        grant = authorize(request, sandbox)
        target = (novnc_dir / path).resolve()
        if not target.is_relative_to(novnc_dir) or not target.is_file():
            raise ApiError(404, "not_found", f"no file {path!r} in the noVNC client")
        media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".js":
            media_type = "text/javascript"  # ES modules need a JavaScript type
        return with_cookie(FileResponse(target, media_type=media_type), sandbox_id, grant)

    # --- Jupyter Lab ----------------------------------------------------------------------

    async def jupyter_socket(conn: Request | WebSocket, sandbox: sandbox_pb2.Sandbox) -> Path:
        path = Path(sandbox.host_run_dir) / "jupyter.sock"
        if await jupyter.answers(path):
            return path
        sandboxes, _ = stub(conn)
        async with upstream("scheduler"):
            reply = await sandboxes.StartJupyter(
                sandbox_pb2.StartJupyterRequest(
                    sandbox_id=sandbox.sandbox_id, base_url=f"/v1/sandboxes/{sandbox.sandbox_id}/jupyter/"
                ),
                timeout=180,
            )
        return Path(reply.host_socket)

    async def full_access(conn: Request | WebSocket, sandbox_id: str) -> tuple[sandbox_pb2.Sandbox, Grant]:
        sandbox = await active(conn, sandbox_id)
        grant = authorize(conn, sandbox)
        if grant.access != Access.FULL:
            raise ApiError(403, "permission_denied", "the view-only token does not open Jupyter")
        return sandbox, grant

    @app.api_route(
        "/v1/sandboxes/{sandbox_id}/jupyter/{path:path}",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
        tags=["jupyter"],
        summary="Jupyter Lab in the sandbox (started on first use), proxied",
        responses=ERROR_RESPONSES,
    )
    async def jupyter_http(request: Request, sandbox_id: str, path: str) -> Response:
        sandbox, grant = await full_access(request, sandbox_id)
        socket_path = await jupyter_socket(request, sandbox)
        response = await jupyter.forward(request, socket_path, sandbox_id)
        return with_cookie(response, sandbox_id, grant)

    @app.websocket("/v1/sandboxes/{sandbox_id}/jupyter/{path:path}")
    async def jupyter_ws(websocket: WebSocket, sandbox_id: str, path: str) -> None:
        try:
            sandbox, _ = await full_access(websocket, sandbox_id)
            socket_path = await jupyter_socket(websocket, sandbox)
        except ApiError as exc:
            await websocket.close(code=4000 + exc.status, reason=exc.message[:120])
            return
        await jupyter.forward_websocket(websocket, socket_path)



async def _pump_vnc(websocket: WebSocket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Bytes both ways between the browser's websocket and x11vnc's unix socket."""

    async def to_browser() -> None:
        while data := await reader.read(VNC_READ_BYTES):
            await websocket.send_bytes(data)

    async def to_vnc() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes") or (message.get("text") or "").encode()
            writer.write(data)
            await writer.drain()

    tasks = [asyncio.create_task(to_browser()), asyncio.create_task(to_vnc())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, Exception):
                await task
        writer.close()
        with contextlib.suppress(Exception):
            await websocket.close()
