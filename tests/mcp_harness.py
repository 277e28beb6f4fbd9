"""`corral mcp --http` as a process, and an MCP client session to it (the mcp library's own
streamable HTTP client), for the MCP tests of the desktop and tenant stacks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from harness import REPO, Cluster
from mcp_types import CallToolResult, TextContent

# Generous: the mcp SDK takes seconds to import on a busy machine.
START_SECONDS = 90.0


def mcp_env(cluster: Cluster) -> dict[str, str]:
    return {**os.environ, "CORRAL_URL": cluster.gateway_url, "CORRAL_API_KEY": "", "PYTHONPATH": str(REPO)}


def text_of(result: Any) -> str:
    assert isinstance(result, CallToolResult), result
    assert not result.is_error, result
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


def error_of(result: Any) -> str:
    assert isinstance(result, CallToolResult) and result.is_error, result
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def mcp_http_server(cluster: Cluster) -> Iterator[str]:
    """Its /mcp URL, once it answers."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "mcp", "--http", "--port", str(port)],
        env=mcp_env(cluster), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                httpx.get(url, timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "corral mcp --http did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def call_over_http(url: str, key: str, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Each (tool, arguments) called in one session with `key` as the Bearer; their results."""
    import httpx2
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
        async with streamable_http_client(url, http_client=http) as (read, write), ClientSession(read, write) as mcp:
            await mcp.initialize()
            return [await mcp.call_tool(name, arguments) for name, arguments in calls]
