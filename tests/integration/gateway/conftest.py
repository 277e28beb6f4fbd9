"""Real gateway processes (uvicorn) in front of real scheduler, memory and executor processes."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import Cluster

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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(f"gateway exited early:\n{service.log()[-3000:]}")
        try:
            httpx.get(cluster.gateway_url + "/openapi.json", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"gateway never answered:\n{service.log()[-3000:]}")


def make_stack(data_dir: Path, *services: str) -> Iterator[Cluster]:
    cluster = Cluster.new(data_dir, **TEST_ENV)
    try:
        for name in services:
            getattr(cluster, f"start_{name}")()
        start_gateway(cluster)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """memory + scheduler + gateway, no executor: tasks stay scheduled until cancelled."""
    yield from make_stack(tmp_path_factory.mktemp("gateway"), "memory", "scheduler")


@pytest.fixture(scope="module")
def full_stack() -> Iterator[Cluster]:
    """Every service, with a bubblewrap executor: tasks run to the end."""
    # Under /tmp, not pytest's root-only tmp tree: sandboxes run as an unprivileged host uid.
    data_dir = Path(tempfile.mkdtemp(prefix="corral-gateway-test-"))
    data_dir.chmod(0o755)
    try:
        yield from make_stack(data_dir, "memory", "scheduler", "executor")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def api(stack: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        yield client


@pytest.fixture
def full_api(full_stack: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=full_stack.gateway_url, timeout=60) as client:
        yield client
