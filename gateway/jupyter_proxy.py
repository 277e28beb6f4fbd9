"""Proxies HTTP and websockets to a sandbox's Jupyter Lab, which listens on a unix socket.

Jupyter runs with base_url = /v1/sandboxes/{id}/jupyter/, so paths go through unchanged; the
sandbox token (query, header or cookie) is checked by the gateway and stripped here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
from fastapi import Request, WebSocket
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, unix_connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from corral.sandbox_socket import SandboxSocket
from gateway.errors import ApiError
from gateway.sandbox_access import COOKIE_PREFIX

# Not forwarded: hop-by-hop headers and our own credentials.
HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
     "transfer-encoding", "upgrade", "host", "authorization", "content-length"}
)
MAX_WS_MESSAGE = 64 * 1024 * 1024


def _query_without_token(conn: Request | WebSocket) -> str:
    pairs = [(k, v) for k, v in conn.query_params.multi_items() if k != "token"]
    return urlencode(pairs)


def _cookie_header(conn: Request | WebSocket) -> str:
    kept = [f"{k}={v}" for k, v in conn.cookies.items() if not k.startswith(COOKIE_PREFIX)]
    return "; ".join(kept)


def _upstream_headers(conn: Request | WebSocket) -> dict[str, str]:
    headers = {k: v for k, v in conn.headers.items() if k.lower() not in HOP_HEADERS | {"cookie"}}
    cookies = _cookie_header(conn)
    if cookies:
        headers["cookie"] = cookies
    return headers


def open_socket(socket_path: Path) -> SandboxSocket:
    """The sandbox's Jupyter socket, checked (corral/sandbox_socket.py): never a link it planted."""
    return SandboxSocket(socket_path.parent, socket_path.name)


class JupyterProxy:
    def __init__(self) -> None:
        # One pooled client per sandbox, connecting through the socket's checked descriptor.
        self._clients: dict[Path, tuple[SandboxSocket, httpx.AsyncClient]] = {}

    def _client(self, socket_path: Path, sandbox_id: str) -> httpx.AsyncClient:
        held = self._clients.get(socket_path)
        if held is None:
            try:
                socket = open_socket(socket_path)
            except OSError as exc:
                raise ApiError(
                    502, "bad_gateway", f"Jupyter in sandbox {sandbox_id} is not reachable: {exc.strerror}"
                ) from None
            transport = httpx.AsyncHTTPTransport(uds=socket.path)
            held = socket, httpx.AsyncClient(transport=transport, base_url="http://jupyter", timeout=None)
            self._clients[socket_path] = held
        return held[1]

    async def _drop(self, socket_path: Path) -> None:
        held = self._clients.pop(socket_path, None)
        if held is not None:
            socket, client = held
            await client.aclose()
            socket.close()

    async def close(self) -> None:
        for socket_path in list(self._clients):
            await self._drop(socket_path)

    async def answers(self, socket_path: Path) -> bool:
        try:
            with open_socket(socket_path) as socket:
                _, writer = await asyncio.wait_for(asyncio.open_unix_connection(socket.path), 2)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    async def forward(self, request: Request, socket_path: Path, sandbox_id: str) -> Response:
        query = _query_without_token(request)
        url = request.url.path + (f"?{query}" if query else "")
        client = self._client(socket_path, sandbox_id)
        upstream = client.build_request(
            request.method, url, headers=_upstream_headers(request), content=await request.body()
        )
        try:
            response = await client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            await self._drop(socket_path)
            raise ApiError(502, "bad_gateway", f"Jupyter in sandbox {sandbox_id} did not answer: {exc}") from None
        headers = [
            (k, v) for k, v in response.headers.multi_items() if k.lower() not in HOP_HEADERS
        ]
        proxied = StreamingResponse(
            _raw(response), status_code=response.status_code, background=BackgroundTask(response.aclose)
        )
        for key, value in headers:
            proxied.headers.append(key, value)
        return proxied

    async def forward_websocket(self, websocket: WebSocket, socket_path: Path) -> None:
        query = _query_without_token(websocket)
        uri = "ws://jupyter" + websocket.url.path + (f"?{query}" if query else "")
        offered = [Subprotocol(p) for p in websocket.scope.get("subprotocols") or []]
        headers = {
            k: v for k, v in _upstream_headers(websocket).items()
            if not k.lower().startswith("sec-websocket") and k.lower() != "origin"
        }
        try:
            with open_socket(socket_path) as socket:
                upstream = await unix_connect(
                    socket.path, uri, subprotocols=offered or None, additional_headers=headers,
                    max_size=MAX_WS_MESSAGE, open_timeout=30,
                )
        except (OSError, ConnectionClosed, Exception) as exc:
            await websocket.accept()  # so the client sees why (a close before accepting is a bare 403)
            await websocket.close(code=1011, reason=f"Jupyter did not accept: {exc}"[:120])
            return
        await websocket.accept(subprotocol=upstream.subprotocol)
        await _pump(websocket, upstream)


async def _raw(response: httpx.Response) -> AsyncIterator[bytes]:
    async for chunk in response.aiter_raw():
        yield chunk


async def _pump(websocket: WebSocket, upstream: ClientConnection) -> None:
    async def to_client() -> None:
        async for message in upstream:
            if isinstance(message, bytes):
                await websocket.send_bytes(message)
            else:
                await websocket.send_text(message)

    async def to_upstream() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await upstream.send(message["bytes"])
            elif message.get("text") is not None:
                await upstream.send(message["text"])

    tasks = [asyncio.create_task(to_client()), asyncio.create_task(to_upstream())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, ConnectionClosed, Exception):
                await task
        await upstream.close()
        with contextlib.suppress(Exception):
            await websocket.close()
