"""The gateway's way to a sandbox's desktop and Jupyter: a byte stream through the executor
holding it (corral.internal.v1.SandboxRelayService), over the gateway's mTLS identity.

The gateway shares no filesystem with the executors (it may run on another machine): the
scheduler tells it, for a valid token, which executor holds the sandbox (sandbox_access.py),
and that executor connects to the socket. `RelayStream` is that connection's two byte
directions; Jupyter's HTTP client reaches it through `RelayNetworkBackend` (httpcore's seam
for where connections come from), its websockets through `socket_bridge`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
import httpcore

from corral.config import Settings
from corral.grpc_server import channel
from corral.internal.v1 import sandbox_relay_pb2, sandbox_relay_pb2_grpc

Endpoint: TypeAlias = sandbox_relay_pb2.SandboxEndpoint.ValueType
VNC = sandbox_relay_pb2.SANDBOX_ENDPOINT_VNC
VNC_VIEW = sandbox_relay_pb2.SANDBOX_ENDPOINT_VNC_VIEW
JUPYTER = sandbox_relay_pb2.SANDBOX_ENDPOINT_JUPYTER
OPEN_TIMEOUT_SECONDS = 30.0
BRIDGE_READ_BYTES = 256 * 1024


class RelayFailed(Exception):
    """The executor did not open the stream (or the stream broke): `message` says why."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


Call = Any  # grpc.aio.StreamStreamCall of the relay's messages


class RelayStream:
    """One opened connection to a sandbox endpoint, as bytes in and out."""

    def __init__(self, call: Call, replies: AsyncIterator[sandbox_relay_pb2.OpenSandboxStreamResponse]) -> None:
        self._call = call
        self._replies = replies
        self._pending = b""
        self._ended = False

    async def read(self, max_bytes: int) -> bytes:
        """Up to `max_bytes` from the endpoint; b"" once it has closed."""
        while not self._pending and not self._ended:
            try:
                reply = await anext(self._replies, None)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.CANCELLED:
                    self._ended = True
                    break
                raise RelayFailed(f"the relay through the executor broke: {exc.details()}", exc.code()) from None
            if reply is None:
                self._ended = True
            else:
                self._pending = reply.data
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    async def write(self, data: bytes) -> None:
        if data:
            try:
                await self._call.write(sandbox_relay_pb2.OpenSandboxStreamRequest(data=data))
            except (grpc.aio.AioRpcError, grpc.aio.UsageError) as exc:
                raise RelayFailed(f"the relay through the executor is closed: {exc}") from None

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._call.done_writing()
        self._call.cancel()


class SandboxRelay:
    """Relay streams to sandboxes, one TLS channel per executor address."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, address: str) -> grpc.aio.Channel:
        """The gateway's channel to the executor at `address` (also its sandbox calls')."""
        held = self._channels.get(address)
        if held is None:
            held = self._channels[address] = channel(address, self._settings, "gateway")
        return held

    def _stub(self, address: str) -> sandbox_relay_pb2_grpc.SandboxRelayServiceAsyncStub:
        return sandbox_relay_pb2_grpc.SandboxRelayServiceStub(self.channel(address))

    async def open(self, address: str, sandbox_id: str, endpoint: Endpoint) -> RelayStream:
        """A stream to `endpoint` of `sandbox_id`, on the executor at `address`."""
        # No request iterator: requests are written on the call as they come.
        call = self._stub(address).OpenSandboxStream()  # type: ignore[call-arg]
        replies = aiter(call)
        target = sandbox_relay_pb2.SandboxStreamTarget(sandbox_id=sandbox_id, endpoint=endpoint)
        try:
            await call.write(sandbox_relay_pb2.OpenSandboxStreamRequest(open=target))
            first = await asyncio.wait_for(anext(replies, None), OPEN_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            raise RelayFailed(exc.details() or exc.code().name.lower(), exc.code()) from None
        except TimeoutError:
            call.cancel()
            raise RelayFailed(f"the executor at {address} did not open the stream in time") from None
        if first is None or first.WhichOneof("message") != "opened":
            call.cancel()
            raise RelayFailed(f"the executor at {address} ended the stream before opening it")
        return RelayStream(call, replies)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(c.close(None) for c in channels))


class _HttpStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: RelayStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return await self._stream.read(max_bytes)
        except RelayFailed as exc:
            raise httpcore.ReadError(exc.message) from None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            await self._stream.write(buffer)
        except RelayFailed as exc:
            raise httpcore.WriteError(exc.message) from None

    async def aclose(self) -> None:
        await self._stream.aclose()


class RelayNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's connections, each a relay stream to one sandbox endpoint (host/port unused)."""

    def __init__(self, relay: SandboxRelay, address: str, sandbox_id: str, endpoint: Endpoint) -> None:
        self._open = (relay, address, sandbox_id, endpoint)

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        relay, address, sandbox_id, endpoint = self._open
        try:
            return _HttpStream(await relay.open(address, sandbox_id, endpoint))
        except RelayFailed as exc:
            raise httpcore.ConnectError(exc.message) from None

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def socket_bridge(stream: RelayStream) -> tuple[socket.socket, asyncio.Task[None]]:
    """One end of a socketpair whose other end is pumped to and from `stream`, for libraries
    that want a socket (the websockets client); the task ends when either side does."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=ours)

    async def to_stream() -> None:
        while data := await reader.read(BRIDGE_READ_BYTES):
            await stream.write(data)

    async def from_stream() -> None:
        while data := await stream.read(BRIDGE_READ_BYTES):
            writer.write(data)
            await writer.drain()

    async def pump() -> None:
        tasks = [asyncio.create_task(to_stream()), asyncio.create_task(from_stream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            writer.close()
            await stream.aclose()

    return theirs, asyncio.create_task(pump())
