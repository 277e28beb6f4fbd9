"""The executor image whose sandboxes are bubblewrap sandboxes inside its own container
(deploy/Dockerfile.executor-bwrap: the shape of a Kubernetes node's executor pod), run under
Docker with exactly the privileges README's "Corral on several machines" documents: not root,
no capabilities, no-new-privileges, a read-only root, Corral's executor seccomp profile and an
unmasked /proc -- never --privileged. Through its gRPC port, as the scheduler calls, a task
makes the isolation suite's checks from inside a sandbox: not root, the host (the executor's
container) hidden, no network, no nested namespaces or mounts, read-only system directories,
and the executor's key out of reach. An executor whose key lies where its sandboxes see it
refuses to start.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import REPO, free_port, scheduler_channel

from corral.internal.v1 import executor_pb2, executor_pb2_grpc
from corral.pki import CA, ensure_deployment

from .conftest import TaskOutcome, spec

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]

IMAGE = os.environ.get("CORRAL_EXECUTOR_BWRAP_IMAGE", "corral/executor-bwrap:latest")
PROFILE = REPO / "deploy" / "seccomp" / "executor-bwrap.json"
EXECUTOR_UID = 10001
# The documented privileges (README, "Corral on several machines"; Kubernetes' bubblewrap
# overlay sets the same): seccomp and an unmasked /proc are all bwrap needs beyond defaults.
PRIVILEGES = [
    "--user", f"{EXECUTOR_UID}:{EXECUTOR_UID}",
    "--cap-drop", "ALL",
    "--security-opt", "no-new-privileges",
    "--security-opt", f"seccomp={PROFILE}",
    "--security-opt", "systempaths=unconfined",
    "--read-only",
    "--tmpfs", "/tmp:rw,exec,nosuid,nodev",
    "--tmpfs", f"/var/lib/corral:rw,exec,nosuid,nodev,uid={EXECUTOR_UID},gid={EXECUTOR_UID},mode=0755",
]
SECRETS = "/var/run/corral/pki"  # where the Kubernetes overlay mounts the executor's Secret


def docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> str:
    info = docker("info")
    if info.returncode != 0:
        pytest.skip("no Docker engine answers `docker info` (scripts/start-docker starts one)")
    if docker("image", "inspect", IMAGE).returncode != 0:
        pytest.skip(f"the image {IMAGE} is missing; build it with deploy/build-images executor-bwrap")
    return IMAGE


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The deployment's CA (with the scheduler's certificate) and the executor's own directory."""
    root = tmp_path_factory.mktemp("pki")
    ensure_deployment(root / "ca", executor_id="unused")
    mine = root / "executor"
    CA.load(root / "ca").issue_into(mine, "executor", "executor-in-container", owner=EXECUTOR_UID)
    for name in ("ca.crt", "executor.crt"):
        os.chmod(mine / name, 0o644)
    return root / "ca", mine


def run_executor(image: str, certs: Path, mount_at: str, port: int | None) -> str:
    name = f"corral-test-exec-{uuid.uuid4().hex[:8]}"
    publish = ["-p", f"127.0.0.1:{port}:50053"] if port else []
    result = docker(
        "run", "-d", "--name", name, *PRIVILEGES, *publish,
        "-v", f"{certs}:{mount_at}:ro",
        "-e", f"CORRAL_TLS_DIR={mount_at}",
        "-e", "CORRAL_EXECUTOR_ID=executor-in-container",
        # Nothing listens there: the executor keeps retrying registration quietly.
        "-e", "CORRAL_SCHEDULER_ADDRESS=127.0.0.1:1", "-e", "CORRAL_MEMORY_ADDRESS=127.0.0.1:2",
        image,
    )
    assert result.returncode == 0, result.stderr
    return name


@contextlib.contextmanager
def container(image: str, certs: Path, mount_at: str, port: int | None = None) -> Iterator[str]:
    name = run_executor(image, certs, mount_at, port)
    try:
        yield name
    finally:
        docker("rm", "-f", name)


def wait_serving(name: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        logs = docker("logs", name).stderr + docker("logs", name).stdout
        if "executor serving" in logs:
            return
        state = docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip()
        assert state == "true", f"the executor container exited:\n{logs}"
        time.sleep(0.3)
    raise AssertionError(f"the executor in {name} did not start serving:\n{logs}")


async def run_task(
    address: str, ca_dir: Path, commands: list[str], desktop: list[dict[str, Any]] | None = None
) -> TaskOutcome:
    """Runs shell `commands` (each may fail), or a desktop task's `desktop` steps, as the scheduler."""
    channel = scheduler_channel(ca_dir, address)
    try:
        stub = executor_pb2_grpc.ExecutorServiceStub(channel)
        if desktop:
            task_spec = spec(desktop, desktop=True)
        else:
            task_spec = spec([{"tool": "shell", "command": c, "continue_on_error": True} for c in commands])
        outcome = TaskOutcome()
        call = stub.RunTask(executor_pb2.RunTaskRequest(task_id=f"task-{uuid.uuid4().hex[:8]}", spec=task_spec))
        async for response in call:
            outcome.events.append(response.event)
        return outcome
    finally:
        await channel.close()


@pytest.fixture(scope="module")
def executor_address(image: str, pki: tuple[Path, Path]) -> Iterator[str]:
    """The executor container, serving on a free port of this host's loopback."""
    _, certs = pki
    port = free_port()
    with container(image, certs, SECRETS, port) as name:
        wait_serving(name)
        yield f"127.0.0.1:{port}"


async def test_bubblewrap_sandboxes_in_an_unprivileged_container(
    executor_address: str, pki: tuple[Path, Path]
) -> None:
    ca_dir, _ = pki
    outcome = await run_task(executor_address, ca_dir, [
        "id -u; id -g; hostname",
        "ps -eo pid,args --no-headers",
        # The executor's own files: its key, its data directory, its process.
        f"cat {SECRETS}/executor.key",
        "ls /var/lib/corral",
        "cat /proc/1/environ | tr '\\0' '\\n' | grep CORRAL_",
        # No network: only lo, and the executor's gRPC port is not this sandbox's 127.0.0.1.
        "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '",
        "python3 -c \"import socket; socket.create_connection(('127.0.0.1', 50053), timeout=2)\"",
        # The container profile let bwrap make namespaces and mounts; the sandbox may not.
        "unshare -U true",
        "unshare -m true",
        "python3 -c \"import ctypes; l = ctypes.CDLL(None, use_errno=True); "
        "r = l.mount(b'none', b'/tmp', b'tmpfs', 0, None); print(r, ctypes.get_errno())\"",
        "touch /usr/x /etc/x /app/x",
        "cat /etc/shadow",
    ])
    assert outcome.state == "TASK_STATE_COMPLETED", outcome.events[-1]
    assert outcome.step(0).stdout == "1000\n1000\nsandbox\n"
    processes = outcome.step(1).stdout.strip().splitlines()
    # Only the sandbox's own processes (bwrap's init, the agent, the shell, ps), not the executor.
    assert len(processes) <= 5 and processes[0].split()[0] == "1" and "bwrap" in processes[0], processes
    assert not any("services.executor" in p for p in processes), processes
    for index in (2, 3, 4, 6, 7, 8, 10, 11):
        assert outcome.step(index).exit_code != 0, (index, outcome.step(index))
    assert "No such file" in outcome.step(2).stderr
    assert outcome.step(5).stdout.split() == ["lo"]
    assert "ConnectionRefusedError" in outcome.step(6).stderr
    assert "Operation not permitted" in outcome.step(7).stderr
    assert "Operation not permitted" in outcome.step(8).stderr
    assert outcome.step(9).stdout == "-1 1\n"  # mount(2): EPERM
    assert "Read-only file system" in outcome.step(10).stderr


async def test_a_desktop_sandbox_in_the_container(executor_address: str, pki: tuple[Path, Path]) -> None:
    """The desktop stack (Xvfb, the gui service on the image's venv at /app/.venv) starts too."""
    ca_dir, _ = pki
    outcome = await run_task(executor_address, ca_dir, [], desktop=[{"tool": "gui", "action": "screenshot"}])
    assert outcome.state == "TASK_STATE_COMPLETED", outcome.events[-1]
    shot = json.loads(outcome.step(0).stdout)
    assert (shot["width"], shot["height"]) == (1024, 768)


def test_refuses_to_start_with_its_key_where_sandboxes_see_it(image: str, pki: tuple[Path, Path]) -> None:
    """Before the check, a step read /etc/corral/pki/executor.key: sandboxes bind /etc and, the
    executor not being root, run as its uid (one `cat` printed the PEM key)."""
    _, certs = pki
    with container(image, certs, "/etc/corral/pki") as name:
        wait = docker("wait", name, timeout=60)
        logs = docker("logs", name)
    assert wait.stdout.strip() != "0"
    words = logs.stderr + logs.stdout
    assert "the executor's TLS key /etc/corral/pki/executor.key is under /etc, which every sandbox binds" in words
    assert "Traceback" not in words

