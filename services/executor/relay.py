"""SandboxRelayService (corral.internal.v1): the bytes of a long-lived sandbox's desktop and
Jupyter, for the gateway, which has no share of this host's filesystem.

The sockets are in the sandbox's run directory, which the sandbox can write: they are reached
only through corral/sandbox_socket.py's checked descriptors, never by name. Only the gateway
may call this (corral/authz.py); it has checked the client's token with the scheduler first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from corral.errors import FailedPrecondition, InvalidArgument, SandboxUnavailable
from corral.grpc_server import Context
from corral.internal.v1 import sandbox_relay_pb2, sandbox_relay_pb2_grpc
from corral.sandbox_socket import SandboxSocket, SocketRefused
from services.executor.sandboxes import SandboxManager

SERVICE_NAME = sandbox_relay_pb2.DESCRIPTOR.services_by_name["SandboxRelayService"].full_name
READ_BYTES = 256 * 1024
# Endpoint -> its socket in the run directory, and whether it needs the desktop.
SOCKETS = {
    sandbox_relay_pb2.SANDBOX_ENDPOINT_VNC: ("vnc.sock", True),
    sandbox_relay_pb2.SANDBOX_ENDPOINT_VNC_VIEW: ("vnc-view.sock", True),
    sandbox_relay_pb2.SANDBOX_ENDPOINT_JUPYTER: ("jupyter.sock", False),
}

Requests = AsyncIterator[sandbox_relay_pb2.OpenSandboxStreamRequest]


class SandboxRelayServicer(sandbox_relay_pb2_grpc.SandboxRelayServiceServicer):
    def __init__(self, sandboxes: SandboxManager) -> None:
        self._sandboxes = sandboxes

    async def OpenSandboxStream(
        self, request_iterator: Requests, context: Context
    ) -> AsyncIterator[sandbox_relay_pb2.OpenSandboxStreamResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("message") != "open":
            raise InvalidArgument("the first message of OpenSandboxStream must be `open` (sandbox and endpoint)")
        target = first.open
        found = SOCKETS.get(target.endpoint)
        if found is None:
            raise InvalidArgument(f"unknown sandbox endpoint {target.endpoint}")
        name, needs_desktop = found
        managed = self._sandboxes.get(target.sandbox_id)  # SandboxNotFound
        if needs_desktop and managed.desktop is None:
            raise FailedPrecondition(f"sandbox {target.sandbox_id} has no desktop")
        try:
            with SandboxSocket(managed.host_run_dir, name) as socket:
                reader, writer = await asyncio.open_unix_connection(socket.path)
        except SocketRefused as exc:
            raise SandboxUnavailable(str(exc.strerror)) from None  # names the socket and why
        except OSError as exc:
            raise SandboxUnavailable(f"{name}: {exc.strerror or exc}") from None
        sending = asyncio.create_task(_to_socket(request_iterator, writer))
        try:
            yield sandbox_relay_pb2.OpenSandboxStreamResponse(opened=sandbox_relay_pb2.SandboxStreamOpened())
            while data := await reader.read(READ_BYTES):
                yield sandbox_relay_pb2.OpenSandboxStreamResponse(data=data)
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sending
            writer.close()


async def _to_socket(requests: Requests, writer: asyncio.StreamWriter) -> None:
    async for request in requests:
        if request.data:
            writer.write(request.data)
            await writer.drain()
    # The gateway's side ended: so does ours, as a closed TCP connection would.
    if writer.can_write_eof():
        writer.write_eof()
