"""Real gateway processes (uvicorn) in front of real scheduler, memory and executor processes.

A module of its own (not conftest) so test files can import it by a name no other folder uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from harness import Cluster, wait_for_http

# Small so the size-limit tests need small bodies, and keep-alives show up in idle streams.
MAX_REQUEST_BYTES = 4096
TEST_ENV = {
    "CORRAL_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
    "CORRAL_GATEWAY_SSE_KEEPALIVE_SECONDS": "0.3",
}

CURL_EXAMPLE = {
    "steps": [
        {"tool": "shell", "command": "ls -la /app"},
        {
            "tool": "python",
            "code": 'with open("hello.txt", "w") as f: f.write("Hello from the agent!")',
        },
        {"tool": "shell", "command": "cat hello.txt"},
    ]
}


def start_gateway(cluster: Cluster, timeout: float = 30.0) -> None:
    """Starts `python -m gateway` and waits until it answers HTTP (healthy or not)."""
    service = cluster.start("gateway", "gateway")
    wait_for_http(service, cluster.gateway_url + "/openapi.json", timeout)


def make_stack(data_dir: Path, *services: str, env: dict[str, str] | None = None) -> Iterator[Cluster]:
    cluster = Cluster.new(data_dir, **(TEST_ENV if env is None else env))
    try:
        for name in services:
            getattr(cluster, f"start_{name}")()
        start_gateway(cluster)
        yield cluster
    finally:
        cluster.stop()


