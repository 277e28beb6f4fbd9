"""A full stack (memory, scheduler, executor, gateway) for the desktop tests, once per driver.

Every test here is marked `gui` and runs with both sandbox drivers: bubblewrap, and docker
(also marked `docker`; skipped, saying why, only when no Docker engine or sandbox image is
there). Sandboxes start their own Xvfb, so no display is needed on the host. Bubblewrap needs
the packages scripts/bootstrap installs on the host (xvfb, openbox, x11vnc, xdotool, xterm,
novnc) and the sandbox runtime's venv (sandbox/runtime/.venv); docker needs the sandbox image
(scripts/build-images), which has all of them, built from the current sources (a stale image
fails the docker tests, naming the files). The browser tests need the host's chromium.

The gateway shares no filesystem with the executor (it reaches desktops and Jupyter through
the executor's relay stream): it runs in a mount namespace of its own where the executor's
run, sandbox and task directories are empty tmpfs mounts, so a gateway that still opened a
socket there would fail these tests. With docker it also runs as the compose deployment's
does: an unprivileged uid -- when the tests run as root and that uid can reach the checkout
(otherwise as root, with a warning saying why).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import Cluster, Service, docker_unavailable, wait_for_http

from corral.config import Settings
from corral.pki import CA
from services.executor.drivers.base import SANDBOX_GID

REPO = Path(__file__).resolve().parents[3]
NEEDED = ("Xvfb", "openbox", "x11vnc", "xdotool", "xterm")
DRIVERS = ["bubblewrap", pytest.param("docker", marks=pytest.mark.docker)]
# deploy/Dockerfile.service's user; the gateway also needs the sandbox user's group.
GATEWAY_UID = 10001


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration/desktop" in str(item.fspath):
            item.add_marker(pytest.mark.gui)


def missing_desktop_packages() -> list[str]:
    missing = [name for name in NEEDED if shutil.which(name) is None]
    if not (REPO / "sandbox" / "runtime" / ".venv" / "bin" / "python").exists():
        missing.append("sandbox/runtime/.venv (run scripts/bootstrap)")
    return missing


# Sources of the desktop the sandbox image holds copies of (scripts/build-images), host path ->
# image path. (The step agent's freshness is the executor tests' business.)
IMAGE_COPIES = {
    "sandbox/runtime/desktop.py": "/app/desktop.py",
    "sandbox/runtime/kernel.py": "/app/kernel.py",
    # The gui service's server is built by corral.grpc_server, whose interceptor maps corral.errors.
    "corral/errors.py": "/opt/corral/corral/errors.py",
    "corral/grpc_server.py": "/opt/corral/corral/grpc_server.py",
    # The gui service's key-name check and enum names.
    "corral/keys.py": "/opt/corral/corral/keys.py",
    "corral/enums.py": "/opt/corral/corral/enums.py",
    **{
        str(path.relative_to(REPO)): f"/opt/corral/{path.relative_to(REPO)}"
        for pattern in ("services/gui/*.py", "corral/v1/gui_pb2*.py")
        for path in sorted(REPO.glob(pattern))
    },
}


def stale_image_files() -> list[str]:
    """The sources whose copy in the sandbox image differs from the checkout's."""
    import hashlib

    import docker

    paths = list(IMAGE_COPIES.values())
    output = docker.from_env(timeout=60).containers.run(
        Settings().docker_image, ["sh", "-c", 'sha256sum "$@" 2>/dev/null; exit 0', "sh", *paths],
        entrypoint=[], remove=True, network_mode="none",
    )
    in_image = dict(reversed(line.split(maxsplit=1)) for line in output.decode().splitlines())
    return [
        source for source, target in IMAGE_COPIES.items()
        if in_image.get(target) != hashlib.sha256((REPO / source).read_bytes()).hexdigest()
    ]


def unprivileged_argv(*argv: str) -> list[str]:
    return ["setpriv", f"--reuid={GATEWAY_UID}", f"--regid={GATEWAY_UID}", f"--groups={SANDBOX_GID}", "--", *argv]


@functools.cache
def unprivileged_gateway_refused() -> str:
    """Why the gateway cannot run as GATEWAY_UID here ("" when it can): not root, or the
    checkout / its venv out of that uid's reach (a clone under /root, say)."""
    if os.geteuid() != 0:
        return "the tests do not run as root"
    probe = subprocess.run(
        unprivileged_argv(sys.executable, "-c", "import gateway.app"),
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    if probe.returncode != 0:
        return f"uid {GATEWAY_UID} cannot run the gateway from {REPO}: {probe.stderr.strip()[-300:]}"
    return ""


# The executor's directories under CORRAL_DATA_DIR (sockets, sandboxes' and tasks' files).
EXECUTOR_DIRS = ("run", "sandboxes", "tasks")


def blind_argv(data_dir: Path, *argv: str) -> list[str]:
    """`argv` in a mount namespace of its own where the executor's directories are empty."""
    mounts = " && ".join(f'mount -t tmpfs -o size=64k,mode=0755 hidden "$0/{name}"' for name in EXECUTOR_DIRS)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$@"', str(data_dir), *argv]


def start_isolated_gateway(cluster: Cluster, unprivileged: bool) -> Service:
    """The gateway without the executor's files (blind_argv); as GATEWAY_UID if `unprivileged`."""
    log_path = cluster.data_dir / "gateway.log"
    env = {**cluster.env, "PYTHONDONTWRITEBYTECODE": "1"}
    argv: list[str] = [sys.executable, "-m", "gateway"]
    if unprivileged:
        # Its certificate in a directory of its own uid (the cluster's is root's, 0700), as compose's.
        tls_dir = cluster.data_dir / "gateway-pki"
        CA.load(cluster.pki_dir).issue_into(tls_dir, "gateway", "gateway", owner=GATEWAY_UID)
        env["CORRAL_TLS_DIR"] = str(tls_dir)
        argv = unprivileged_argv(*argv)
    for name in EXECUTOR_DIRS:
        (cluster.data_dir / name).mkdir(mode=0o755, parents=True, exist_ok=True)
    if os.geteuid() == 0:
        argv = blind_argv(cluster.data_dir, *argv)
    else:
        warnings.warn("the desktop tests' gateway sees the executor's files: a mount namespace needs root", stacklevel=1)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            argv,
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    service = Service("gateway", proc, log_path)
    cluster.services["gateway"] = service
    return service


def gateway_sees(cluster: Cluster, path: Path) -> bool:
    """Whether `path` exists in the gateway's view of the filesystem (its mount namespace)."""
    return Path(f"/proc/{cluster.services['gateway'].proc.pid}/root{path}").exists()


def start_gateway(cluster: Cluster, timeout: float = 30.0, unprivileged: bool = False) -> None:
    service = start_isolated_gateway(cluster, unprivileged)
    wait_for_http(service, cluster.gateway_url + "/openapi.json", timeout)


@pytest.fixture(scope="package", params=DRIVERS)
def sandbox_driver(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if name == "docker":
        reason = docker_unavailable()
        if reason:
            pytest.skip(reason)
        stale = stale_image_files()
        if stale:
            pytest.fail(f"the sandbox image is older than {', '.join(stale)}: rebuild it with scripts/build-images")
    else:
        missing = missing_desktop_packages()
        if missing:
            pytest.fail(f"desktop packages missing: {', '.join(missing)} (run scripts/bootstrap)")
    return name


@pytest.fixture(scope="package")
def desktop_stack(sandbox_driver: str) -> Iterator[Cluster]:
    # Short and under /tmp: unix socket paths are limited to 107 bytes, and sandboxes run as
    # an unprivileged host uid that cannot enter pytest's root-only tmp tree.
    data_dir = Path(tempfile.mkdtemp(prefix="cd-", dir="/tmp"))
    data_dir.chmod(0o755)
    cluster = Cluster.new(
        data_dir, CORRAL_SANDBOX_RUN_DIR=str(data_dir / "run"), CORRAL_SANDBOX_DRIVER=sandbox_driver
    )
    try:
        cluster.start_memory()
        cluster.start_scheduler()
        cluster.start_executor()
        unprivileged = sandbox_driver == "docker"
        if unprivileged and (refused := unprivileged_gateway_refused()):
            warnings.warn(f"the docker desktop tests run the gateway as root: {refused}", stacklevel=1)
            unprivileged = False
        start_gateway(cluster, unprivileged=unprivileged)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="package")
def desktop_sandbox(desktop_stack: Cluster) -> Iterator[Any]:
    """One long-lived desktop sandbox (a corral.Sandbox) shared by the tests that only need
    one (desktops are slow to start); each test leaves it usable for the next."""
    from corral import Sandbox

    with Sandbox.create(desktop=True, ttl=1800, url=desktop_stack.gateway_url) as sandbox:
        yield sandbox


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


def host_task_dir(cluster: Cluster, task: dict[str, Any]) -> Path:
    """Where the executor keeps `task`'s directory on this host (the status document says only
    where it is inside the sandbox): CORRAL_DATA_DIR/tasks/ID, or, in a long-lived sandbox,
    CORRAL_DATA_DIR/sandboxes/SANDBOX/tasks/ID."""
    assert task["task_dir"] == f"/tasks/{task['task_id']}", task
    if task["sandbox_id"]:
        return cluster.data_dir / "sandboxes" / task["sandbox_id"] / "tasks" / task["task_id"]
    return cluster.data_dir / "tasks" / task["task_id"]


def run_task(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    reply = api.post("/v1/tasks", json=body)
    assert reply.status_code == 201, reply.text
    return wait_for_task(api, reply.json()["task_id"])
