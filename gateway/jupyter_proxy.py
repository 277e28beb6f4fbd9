"""Proxies HTTP and websockets to a sandbox's Jupyter Lab, which listens on a unix socket on
its executor's host: every connection is a relay stream through that executor
(gateway/sandbox_relay.py), the gateway never touches the socket.

Jupyter runs with base_url = /v1/sandboxes/{id}/jupyter/, so paths go through unchanged; the
sandbox token (query, header or cookie) is checked by the gateway and stripped here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import httpcore
import httpx
from fastapi import Request, WebSocket
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from gateway.errors import ApiError
from gateway.sandbox_access import COOKIE_PREFIX, Grant
from gateway.sandbox_relay import JUPYTER, RelayFailed, RelayNetworkBackend, SandboxRelay, socket_bridge

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


def _relay_transport(backend: httpcore.AsyncNetworkBackend) -> httpx.AsyncHTTPTransport:
    """httpx's transport with its connections made by `backend` (httpx has no parameter for
    it; httpcore's pool has)."""
    transport = httpx.AsyncHTTPTransport()
    transport._pool = httpcore.AsyncConnectionPool(network_backend=backend)
    return transport


class JupyterProxy:
    def __init__(self, relay: SandboxRelay) -> None:
        self._relay = relay
        # One pooled client per sandbox (and executor), its connections relay streams.
        self._clients: dict[tuple[str, str], httpx.AsyncClient] = {}

    def _client(self, grant: Grant) -> httpx.AsyncClient:
        key = (grant.executor_address, grant.sandbox.sandbox_id)
        client = self._clients.get(key)
        if client is None:
            backend = RelayNetworkBackend(self._relay, *key, JUPYTER)
            client = httpx.AsyncClient(transport=_relay_transport(backend), base_url="http://jupyter", timeout=None)
            self._clients[key] = client
        return client

    async def _drop(self, key: tuple[str, str]) -> None:
        client = self._clients.pop(key, None)
        if client is not None:
            await client.aclose()

    async def close(self) -> None:
        for key in list(self._clients):
            await self._drop(key)

    async def answers(self, grant: Grant) -> bool:
        try:
            stream = await self._relay.open(grant.executor_address, grant.sandbox.sandbox_id, JUPYTER)
        except RelayFailed:
            return False
        await stream.aclose()
        return True

    async def forward(self, request: Request, grant: Grant) -> Response:
        sandbox_id = grant.sandbox.sandbox_id
        query = _query_without_token(request)
        url = request.url.path + (f"?{query}" if query else "")
        client = self._client(grant)
        upstream = client.build_request(
            request.method, url, headers=_upstream_headers(request), content=await request.body()
        )
        try:
            response = await client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            await self._drop((grant.executor_address, sandbox_id))
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

    async def forward_websocket(self, websocket: WebSocket, grant: Grant) -> None:
        query = _query_without_token(websocket)
        uri = "ws://jupyter" + websocket.url.path + (f"?{query}" if query else "")
        offered = [Subprotocol(p) for p in websocket.scope.get("subprotocols") or []]
        headers = {
            k: v for k, v in _upstream_headers(websocket).items()
            if not k.lower().startswith("sec-websocket") and k.lower() != "origin"
        }
        bridge: asyncio.Task[None] | None = None
        try:
            stream = await self._relay.open(grant.executor_address, grant.sandbox.sandbox_id, JUPYTER)
            sock, bridge = await socket_bridge(stream)
            upstream = await connect(
                uri, sock=sock, subprotocols=offered or None, additional_headers=headers,
                max_size=MAX_WS_MESSAGE, open_timeout=30,
            )
        except (RelayFailed, OSError, ConnectionClosed, Exception) as exc:
            if bridge is not None:
                bridge.cancel()
            reason = exc.message if isinstance(exc, RelayFailed) else str(exc)
            await websocket.accept()  # so the client sees why (a close before accepting is a bare 403)
            await websocket.close(code=1011, reason=f"Jupyter did not accept: {reason}"[:120])
            return
        try:
            await websocket.accept(subprotocol=upstream.subprotocol)
            await _pump(websocket, upstream)
        finally:
            bridge.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await bridge


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
