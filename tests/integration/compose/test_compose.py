"""deploy/docker-compose.yml for real: build the images, up, the first admin key as the compose
file says, the README's curl example with a key, no key 401 and another tenant's task 404,
tasks on both executors, PostgreSQL behind scheduler and memory, down leaving no sandbox
container.

Runs under its own compose project name, gateway port, host data directory and executor ids,
so it neither touches nor is touched by another deployment on the same Docker engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import REPO, free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1200)]

COMPOSE_FILE = REPO / "deploy" / "docker-compose.yml"
SERVICES = ("postgres", "scheduler", "memory", "executor-1", "executor-2", "gateway")
ENDED = {"completed", "failed", "cancelled"}
# The seed's example, verbatim (DESIGN.md section 1).
CURL_EXAMPLE_BODY = """{
  "steps": [
    {"tool": "shell",  "command": "ls -la /app"},
    {"tool": "python", "code": "with open(\\"hello.txt\\", \\"w\\") as f: f.write(\\"Hello from the agent!\\")"},
    {"tool": "shell",  "command": "cat hello.txt"}
  ]}"""


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    pytest.skip("neither docker-compose nor `docker compose` is installed (apt-get install docker-compose)")


def require_docker() -> None:
    if not shutil.which("docker") or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker engine answers `docker info` (scripts/start-docker starts one)")


@dataclass
class Deployment:
    compose: list[str]
    env: dict[str, str]
    url: str
    prefix: str
    # The first admin key (made in the fixture as the compose file's header says).
    key: str = ""

    @property
    def auth(self) -> tuple[str, str]:
        return ("-H", f"Authorization: Bearer {self.key}")

    def schedule(self, body: str, key: str = "") -> str:
        reply = curl("-X", "POST", f"{self.url}/schedule", "-H", f"Authorization: Bearer {key or self.key}",
                     "-H", "Content-Type: application/json", "-d", body)
        task_id: str = json.loads(reply)["task_id"]
        return task_id

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.compose, "-f", str(COMPOSE_FILE), *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def container(self, service: str) -> str:
        return self.run("ps", "-q", service).stdout.strip()

    def health(self, service: str) -> str:
        container = self.container(service)
        if not container:
            return "missing"
        inspected = subprocess.run(
            ["docker", "inspect", "--format", "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}", container],
            capture_output=True, text=True,
        ).stdout.split()
        return inspected[-1] if inspected else "missing"

    def logs(self) -> str:
        return self.run("logs", "--no-color", "--tail", "60", check=False).stdout[-20000:]

    def sandbox_containers(self) -> list[str]:
        names: list[str] = []
        for executor in ("executor-1", "executor-2"):
            listed = subprocess.run(
                ["docker", "ps", "-a", "-q", "--filter", f"label=corral.executor={self.prefix}{executor}"],
                capture_output=True, text=True, check=True,
            ).stdout.split()
            names += listed
        return names


def curl(*args: str) -> str:
    """The real curl, as a user would type it."""
    return subprocess.run(["curl", "-sS", "--fail-with-body", *args], capture_output=True, text=True, check=True).stdout


def wait_for_status(d: Deployment, task_id: str, states: set[str], limit: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + limit
    while True:
        status: dict[str, object] = json.loads(curl(*d.auth, f"{d.url}/status?task_id={task_id}"))
        if status["status"] in states or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    require_docker()
    compose = compose_command()
    if os.environ.get("CORRAL_COMPOSE_SKIP_BUILD") != "1":
        # Cheap when nothing changed (layer cache); the sandbox image is built only if missing.
        subprocess.run([str(REPO / "deploy" / "build-images")], check=True, timeout=3600)
    run_id = uuid.uuid4().hex[:8]
    port = free_port()
    data_dir = tmp_path_factory.mktemp("compose") / "data"
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": f"corraltest{run_id}",
        "CORRAL_GATEWAY_PUBLISH": f"127.0.0.1:{port}",
        "CORRAL_HOST_DATA_DIR": str(data_dir),
        "CORRAL_EXECUTOR_ID_PREFIX": f"t{run_id}-",
    }
    d = Deployment(compose=compose, env=env, url=f"http://127.0.0.1:{port}", prefix=f"t{run_id}-")
    try:
        d.run("up", "-d")
        deadline = time.monotonic() + 240
        while (states := {s: d.health(s) for s in SERVICES}) != dict.fromkeys(SERVICES, "healthy"):
            assert time.monotonic() < deadline, f"not all healthy: {states}\n{d.logs()}"
            assert "unhealthy" not in states.values() and "exited" not in states.values(), f"{states}\n{d.logs()}"
            time.sleep(1)
        created = d.run("exec", "-T", "scheduler", "corral", "keys", "create", "--admin", "--name", "admin",
                        "--database", "--json")
        d.key = json.loads(created.stdout)["key"]
        yield d
    finally:
        d.run("down", "-v", "--remove-orphans", check=False)
        for container in d.sandbox_containers():  # only if the executors failed to
            subprocess.run(["docker", "rm", "-f", container], capture_output=True)
        shutil.rmtree(data_dir, ignore_errors=True)


def test_curl_example_completes(deployment: Deployment) -> None:
    task_id = deployment.schedule(CURL_EXAMPLE_BODY)
    status = wait_for_status(deployment, task_id, ENDED)
    assert status["status"] == "completed", status
    steps = status["steps"]
    assert isinstance(steps, list) and [s["exit_code"] for s in steps] == [0, 0, 0]
    assert "agent.py" in steps[0]["stdout"]  # /app holds the runtime
    assert steps[2]["stdout"] == "Hello from the agent!"
    assert status["log_path"] == f"/tasks/{task_id}/agent.log"
    assert str(status["executor_id"]).startswith(deployment.prefix)
    # The executor's task directory is the host's: CORRAL_HOST_DATA_DIR/executor-N/tasks/ID.
    executor = str(status["executor_id"]).removeprefix(deployment.prefix)
    host_log = Path(deployment.env["CORRAL_HOST_DATA_DIR"]) / executor / "tasks" / task_id / "agent.log"
    assert host_log.is_file() and "Hello from the agent!" in host_log.read_text()


def test_keys_are_required_and_tenants_see_only_their_own(deployment: Deployment) -> None:
    def status_code(*args: str) -> int:
        out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", *args],
                             capture_output=True, text=True, check=True).stdout
        return int(out)

    assert status_code("-X", "POST", f"{deployment.url}/schedule", "-H", "Content-Type: application/json",
                       "-d", CURL_EXAMPLE_BODY) == 401
    assert status_code(f"{deployment.url}/v1/tasks") == 401

    def new_key(name: str) -> str:
        made = curl("-X", "POST", f"{deployment.url}/v1/keys", *deployment.auth, "-H", "Content-Type: application/json",
                    "-d", json.dumps({"name": name}))
        key: str = json.loads(made)["key"]
        return key

    alice, bob = new_key("alice"), new_key("bob")
    task_id = deployment.schedule(CURL_EXAMPLE_BODY, key=alice)
    assert status_code("-H", f"Authorization: Bearer {bob}", f"{deployment.url}/status?task_id={task_id}") == 404
    assert status_code("-H", f"Authorization: Bearer {alice}", f"{deployment.url}/status?task_id={task_id}") == 200
    assert wait_for_status(deployment, task_id, ENDED)["tenant_id"] == "alice"  # the admin sees it


def test_tasks_spread_over_both_executors(deployment: Deployment) -> None:
    body = json.dumps({"steps": [{"tool": "shell", "command": "sleep 1; id -u"}]})
    ids = [deployment.schedule(body) for _ in range(8)]
    statuses = [wait_for_status(deployment, task_id, ENDED) for task_id in ids]
    assert [s["status"] for s in statuses] == ["completed"] * len(ids), statuses
    assert {s["steps"][0]["stdout"] for s in statuses} == {"1000\n"}  # type: ignore[index]
    assert {s["executor_id"] for s in statuses} == {f"{deployment.prefix}executor-1", f"{deployment.prefix}executor-2"}


def test_scheduler_and_memory_store_in_postgres(deployment: Deployment) -> None:
    query = "SELECT (SELECT count(*) FROM scheduler_tasks) > 0 AND (SELECT count(*) FROM history_events) > 0"
    answer = deployment.run("exec", "-T", "postgres", "psql", "-U", "corral", "-d", "corral", "-tAc", query)
    assert answer.stdout.strip() == "t"


def test_only_executors_get_the_docker_socket(deployment: Deployment) -> None:
    with_socket = set()
    for service in SERVICES:
        mounts = subprocess.run(
            ["docker", "inspect", "--format", "{{json .Mounts}}", deployment.container(service)],
            capture_output=True, text=True, check=True,
        ).stdout
        if any(m["Destination"] == "/var/run/docker.sock" for m in json.loads(mounts)):
            with_socket.add(service)
    assert with_socket == {"executor-1", "executor-2"}


# The README's SDK example, as an agent on another machine runs it (CORRAL_URL, CORRAL_API_KEY).
AGENT_SCRIPT = """
from corral import Sandbox, run_task

with Sandbox.create(desktop=True, ttl=600) as sb:
    r = sb.run_shell("python3 --version")
    assert r.exit_code == 0 and r.stdout.startswith("Python 3"), r
    sb.write_file("app.py", "print(6 * 7)")
    print(sb.run_python("exec(open('app.py').read())").stdout, end="")
    png = sb.screenshot()
    assert png.startswith(b"\\x89PNG"), png[:8]
    sb.click(100, 100); sb.type("hello\\n"); sb.key("ctrl+s")
    print("".join(c.text for c in sb.run_shell("echo streamed", stream=True)), end="")
    assert sb.read_file("app.py", binary=True) == b"print(6 * 7)"
    print(sb.id)
print(run_task([{"tool": "shell", "command": "echo one-shot"}]).steps[0].stdout, end="")
"""


def test_sdk_agent_script_and_cli_against_compose_with_a_key(deployment: Deployment) -> None:
    made = curl("-X", "POST", f"{deployment.url}/v1/keys", *deployment.auth, "-H", "Content-Type: application/json",
                "-d", json.dumps({"name": "agent"}))
    client_env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    client_env |= {"CORRAL_URL": deployment.url, "CORRAL_API_KEY": json.loads(made)["key"],
                   "PYTHONPATH": str(REPO)}

    agent = subprocess.run([sys.executable, "-c", AGENT_SCRIPT], env=client_env, capture_output=True, text=True,
                           timeout=300)
    assert agent.returncode == 0, agent.stderr
    lines = agent.stdout.splitlines()
    assert (lines[0], lines[1], lines[3]) == ("42", "streamed", "one-shot"), agent.stdout

    def corral(*args: str, env: dict[str, str] = client_env) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "corral.cli", "--url", deployment.url, *args], env=env,
                              capture_output=True, text=True, timeout=180, cwd=REPO)

    ran = corral("run", "-q", "echo x")
    assert (ran.returncode, ran.stdout) == (0, "x\n"), ran.stderr
    sandbox = corral("sandbox", "create").stdout.strip()
    try:
        executed = corral("exec", sandbox, "--", "sh", "-c", "echo in-compose; exit 4")
        assert (executed.returncode, executed.stdout) == (4, "in-compose\n"), executed.stderr
    finally:
        assert corral("sandbox", "rm", sandbox).returncode == 0
    no_key = corral("run", "-q", "echo x", env={k: v for k, v in client_env.items() if k != "CORRAL_API_KEY"})
    assert no_key.returncode == 2 and no_key.stderr.startswith("corral run: UNAUTHENTICATED: "), no_key.stderr


def test_down_leaves_no_sandbox_container(deployment: Deployment) -> None:
    # Runs last in this module: it takes the deployment down with tasks still running.
    body = json.dumps({"steps": [{"tool": "shell", "command": "sleep 600"}]})
    ids = [deployment.schedule(body) for _ in range(2)]
    for task_id in ids:
        assert wait_for_status(deployment, task_id, {"running"} | ENDED)["status"] == "running"
    assert deployment.sandbox_containers(), "running tasks should have sandbox containers"
    deployment.run("down", "-v")
    assert deployment.sandbox_containers() == []
