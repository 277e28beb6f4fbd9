"""A full stack (memory, scheduler, bubblewrap executor, gateway) for the desktop tests.

Every test here is marked `gui`: sandboxes start their own Xvfb, so no display is needed on
the host, only the packages scripts/bootstrap installs (xvfb, openbox, x11vnc, xdotool,
xterm, novnc, chromium) and the sandbox runtime's venv (sandbox/runtime/.venv).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import Cluster

REPO = Path(__file__).resolve().parents[3]
NEEDED = ("Xvfb", "openbox", "x11vnc", "xdotool", "xterm")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration/desktop" in str(item.fspath):
            item.add_marker(pytest.mark.gui)


def missing_desktop_packages() -> list[str]:
    missing = [name for name in NEEDED if shutil.which(name) is None]
    if not (REPO / "sandbox" / "runtime" / ".venv" / "bin" / "python").exists():
        missing.append("sandbox/runtime/.venv (run scripts/bootstrap)")
    return missing


def start_gateway(cluster: Cluster, timeout: float = 30.0) -> None:
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


@pytest.fixture(scope="package")
def desktop_stack() -> Iterator[Cluster]:
    missing = missing_desktop_packages()
    if missing:
        pytest.fail(f"desktop packages missing: {', '.join(missing)} (run scripts/bootstrap)")
    # Short and under /tmp: unix socket paths are limited to 107 bytes, and sandboxes run as
    # an unprivileged host uid that cannot enter pytest's root-only tmp tree.
    data_dir = Path(tempfile.mkdtemp(prefix="cd-", dir="/tmp"))
    data_dir.chmod(0o755)
    cluster = Cluster.new(data_dir, CORRAL_SANDBOX_RUN_DIR=str(data_dir / "run"))
    try:
        cluster.start_memory()
        cluster.start_scheduler()
        cluster.start_executor()
        start_gateway(cluster)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def api(desktop_stack: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=desktop_stack.gateway_url, timeout=180) as client:
        yield client


def wait_for_task(api: httpx.Client, task_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task: dict[str, Any] = api.get(f"/v1/tasks/{task_id}").json()
        if task["status"] in ("completed", "failed", "cancelled"):
            return task
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not end: {task}")


def run_task(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    reply = api.post("/v1/tasks", json=body)
    assert reply.status_code == 201, reply.text
    return wait_for_task(api, reply.json()["task_id"])
