"""The executor's relay of a sandbox's desktop and Jupyter bytes (SandboxRelayService).

The gateway reaches the sockets only through it, from a mount namespace where the executor's
directories are empty (conftest.blind_argv): a VNC session through the gateway works while the
gateway cannot see the sandbox's run directory at all.

Attack: before, the gateway opened the sockets on a shared filesystem; now the executor opens
them for whoever calls its relay, so that must be the gateway alone. A caller with another
identity of the deployment (an executor's, the scheduler's, an admin's) gets PERMISSION_DENIED
and never a byte of the desktop; one with no certificate (a tenant holding only an API key)
does not get past the TLS handshake.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import websockets
from harness import Cluster

from corral.internal.v1 import sandbox_relay_pb2, sandbox_relay_pb2_grpc

from .conftest import gateway_sees

VNC = sandbox_relay_pb2.SANDBOX_ENDPOINT_VNC


def relay_stub(cluster: Cluster, credentials: grpc.ChannelCredentials) -> tuple[grpc.Channel, Any]:
    channel = grpc.secure_channel(cluster.executor_address, credentials)
    return channel, sandbox_relay_pb2_grpc.SandboxRelayServiceStub(channel)


def first_replies(stub: Any, sandbox_id: str, count: int) -> list[sandbox_relay_pb2.OpenSandboxStreamResponse]:
    """The first `count` replies of a relay stream to the sandbox's VNC, then hangs up."""
    done = threading.Event()

    def requests() -> Iterator[sandbox_relay_pb2.OpenSandboxStreamRequest]:
        target = sandbox_relay_pb2.SandboxStreamTarget(sandbox_id=sandbox_id, endpoint=VNC)
        yield sandbox_relay_pb2.OpenSandboxStreamRequest(open=target)
        done.wait(30)

    call = stub.OpenSandboxStream(requests(), timeout=30)
    try:
        return [next(call) for _ in range(count)]
    finally:
        done.set()
        call.cancel()


async def vnc_banner(url: str, token: str) -> bytes:
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=30) as ws:
        first = await asyncio.wait_for(ws.recv(), 30)
        assert isinstance(first, bytes)
        return first


@pytest.mark.timeout(60)
def test_the_gateway_reaches_the_desktop_without_the_executors_files(desktop_stack: Cluster, desktop_sandbox: Any) -> None:
    run_dir = desktop_stack.data_dir / "run" / desktop_sandbox.id
    url = desktop_stack.gateway_url.replace("http://", "ws://") + f"/v1/sandboxes/{desktop_sandbox.id}/vnc/websockify"
    assert asyncio.run(vnc_banner(url, desktop_sandbox.token)).startswith(b"RFB ")
    assert (run_dir / "vnc.sock").exists()
    assert not gateway_sees(desktop_stack, run_dir), "the gateway sees the executor's run directory"


@pytest.mark.timeout(60)
def test_only_the_gateway_may_open_a_relay_stream(desktop_stack: Cluster, desktop_sandbox: Any) -> None:
    channel, stub = relay_stub(desktop_stack, desktop_stack.credentials("gateway"))
    with channel:
        opened, data = first_replies(stub, desktop_sandbox.id, 2)
        assert opened.WhichOneof("message") == "opened"
        assert data.data.startswith(b"RFB "), data

    for role, name in (("executor", "executor-other"), ("scheduler", None), ("admin", None)):
        channel, stub = relay_stub(desktop_stack, desktop_stack.credentials(role, name))
        with channel, pytest.raises(grpc.RpcError) as refused:
            first_replies(stub, desktop_sandbox.id, 1)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, (role, refused.value)
        assert "is for role gateway" in (refused.value.details() or ""), refused.value.details()

    # No client certificate (an API key's holder): the executor's TLS refuses the handshake.
    channel, stub = relay_stub(desktop_stack, grpc.ssl_channel_credentials(root_certificates=desktop_stack.ca_cert))
    with channel, pytest.raises(grpc.RpcError) as no_certificate:
        first_replies(stub, desktop_sandbox.id, 1)
    assert no_certificate.value.code() == grpc.StatusCode.UNAVAILABLE, no_certificate.value


@pytest.mark.timeout(60)
def test_a_relay_stream_names_what_is_wrong(desktop_stack: Cluster, desktop_sandbox: Any) -> None:
    channel, stub = relay_stub(desktop_stack, desktop_stack.credentials("gateway"))
    with channel, pytest.raises(grpc.RpcError) as unknown:
        first_replies(stub, "sb-nope", 1)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND, unknown.value
    assert "sb-nope" in (unknown.value.details() or "")
