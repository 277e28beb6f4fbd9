"""Long-lived sandboxes through the REST API: tasks one after another in one sandbox, files,
processes and desktop persisting; extend; delete; automatic expiry."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time

import httpx
from harness import Cluster

from .conftest import host_task_dir, run_task, wait_for_task

# Run in a sandbox whose desktop is up: the desktop must not have weakened its isolation.
ISOLATION_PROBE = (
    "id -u; grep CapEff /proc/self/status | tr -d '\\t'; "
    "touch /usr/corral-probe 2>/dev/null && echo root-writable || echo root-read-only; "
    "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' '"
)


def sandbox_containers(sandbox_id: str) -> list[object]:
    from services.executor.drivers.docker import LABEL_TASK, docker_client

    return list(docker_client().api.containers(all=True, filters={"label": f"{LABEL_TASK}={sandbox_id}"}))


def test_tasks_share_a_sandbox_files_processes_and_desktop(
    api: httpx.Client, desktop_stack: Cluster, sandbox_driver: str
) -> None:
    created = api.post("/v1/sandboxes", json={"desktop": True, "ttl": 600})
    assert created.status_code == 201, created.text
    sandbox = created.json()
    sandbox_id = sandbox["sandbox_id"]
    assert sandbox["status"] == "active" and sandbox["token"] and sandbox["view_token"]
    try:
        first = run_task(api, {"sandbox_id": sandbox_id, "steps": [
            {"tool": "shell", "command": "echo kept > note.txt; pwd; echo $HOME; echo $CORRAL_TASK_DIR"},
            {"tool": "shell", "command": "sleep 1000 & echo $! > /tmp/sleeper.pid"},
            {"tool": "shell", "command": "xterm -T persistent-term >/dev/null 2>&1 &"},
            {"tool": "gui", "action": "wait_window", "text": "persistent-term", "timeout": 60},
        ]})
        assert first["status"] == "completed", first
        # Every task works in the sandbox's workspace; its own directory holds its logs.
        assert first["steps"][0]["stdout"] == f"/workspace\n/workspace\n/tasks/{first['task_id']}\n"
        assert first["sandbox_id"] == sandbox_id
        agent_log = (host_task_dir(desktop_stack, first) / "agent.log").read_text()
        assert f"({sandbox_driver}) in sandbox {sandbox_id}" in agent_log, agent_log[:500]

        # The desktop's sockets, as the host (executor, gateway) sees them: owner and group
        # may connect (a non-root gateway gets the sandbox's group), others may not.
        run_dir = desktop_stack.data_dir / "run" / sandbox_id
        for name in ("gui.sock", "vnc.sock", "vnc-view.sock"):
            mode = (run_dir / name).stat().st_mode
            assert stat.S_ISSOCK(mode) and mode & 0o060 == 0o060 and mode & 0o007 == 0, (name, oct(mode))

        second = run_task(api, {"sandbox_id": sandbox_id, "steps": [
            {"tool": "shell", "command": "cat note.txt"},
            {"tool": "shell", "command": "kill -0 $(cat /tmp/sleeper.pid) && echo alive"},
            {"tool": "gui", "action": "list_windows"},
            {"tool": "write_file", "path": "second.txt", "content": "hi"},
            {"tool": "read_file", "path": "second.txt"},
            {"tool": "shell", "command": ISOLATION_PROBE},
        ]})
        assert second["status"] == "completed", second
        assert second["steps"][5]["stdout"] == "1000\nCapEff:0000000000000000\nroot-read-only\nlo ", second["steps"][5]
        if sandbox_driver == "docker":
            assert len(sandbox_containers(sandbox_id)) == 1
        assert second["steps"][0]["stdout"] == "kept\n"
        assert second["steps"][1]["stdout"] == "alive\n"
        titles = [w["title"] for w in json.loads(second["steps"][2]["stdout"])["windows"]]
        assert "persistent-term" in titles
        assert second["steps"][4]["stdout"] == "hi"
        workspace = desktop_stack.data_dir / "sandboxes" / sandbox_id / "tasks" / ".workspace"
        assert (workspace / "second.txt").read_text() == "hi"

        listed = api.get("/v1/sandboxes").json()["sandboxes"]
        assert sandbox_id in [s["sandbox_id"] for s in listed]
        assert "token" not in api.get(f"/v1/sandboxes/{sandbox_id}").json()

        before = api.get(f"/v1/sandboxes/{sandbox_id}").json()["expires_at"]
        extended = api.post(f"/v1/sandboxes/{sandbox_id}/extend", json={"ttl": 3000})
        assert extended.status_code == 200, extended.text
        assert extended.json()["expires_at"] > before
    finally:
        deleted = api.delete(f"/v1/sandboxes/{sandbox_id}")
    assert deleted.status_code == 200 and deleted.json()["status"] == "deleted"
    if sandbox_driver == "docker":
        # Killed at once; removed in the background.
        deadline = time.monotonic() + 60
        while sandbox_containers(sandbox_id):
            assert time.monotonic() < deadline, "the sandbox's container was never removed"
            time.sleep(0.2)
    refused = api.post("/v1/tasks", json={"sandbox_id": sandbox_id, "steps": [{"tool": "shell", "command": "true"}]})
    assert refused.status_code == 409, refused.text
    assert "deleted" in refused.json()["error"]["message"]


def test_unknown_sandbox_and_bad_requests(api: httpx.Client) -> None:
    reply = api.post("/v1/tasks", json={"sandbox_id": "nope", "steps": [{"tool": "shell", "command": "true"}]})
    assert reply.status_code == 404, reply.text
    assert api.get("/v1/sandboxes/nope").status_code == 404
    assert api.post("/v1/sandboxes", json={"ttl": -1}).status_code == 400
    assert api.post("/v1/sandboxes", json={"ttl": 10**9}).status_code == 400
    too_big = api.post("/v1/sandboxes", json={"limits": {"max_processes": 10**6}})
    assert too_big.status_code == 400, too_big.text
    assert "limits.max_processes 1000000 exceeds this deployment's maximum of 4096 processes" in too_big.text


def test_a_sandbox_expires_by_itself(api: httpx.Client) -> None:
    sandbox = api.post("/v1/sandboxes", json={"ttl": 2}).json()
    sandbox_id = sandbox["sandbox_id"]
    task = run_task(api, {"sandbox_id": sandbox_id, "steps": [{"tool": "shell", "command": "sleep 600 &"}]})
    assert task["status"] == "completed", task
    deadline = time.monotonic() + 60
    while api.get(f"/v1/sandboxes/{sandbox_id}").json()["status"] == "active":
        assert time.monotonic() < deadline, "the sandbox never expired"
        time.sleep(0.2)
    assert api.get(f"/v1/sandboxes/{sandbox_id}").json()["status"] == "expired"
    late = api.post("/v1/tasks", json={"sandbox_id": sandbox_id, "steps": [{"tool": "shell", "command": "true"}]})
    assert late.status_code == 409


def test_a_running_task_in_a_deleted_sandbox_fails(api: httpx.Client) -> None:
    sandbox_id = api.post("/v1/sandboxes", json={}).json()["sandbox_id"]
    reply = api.post("/v1/tasks", json={"sandbox_id": sandbox_id, "steps": [
        {"tool": "shell", "command": "echo started; sleep 600"}]})
    task_id = reply.json()["task_id"]
    deadline = time.monotonic() + 60
    while api.get(f"/v1/tasks/{task_id}").json()["steps"][0]["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    api.delete(f"/v1/sandboxes/{sandbox_id}")
    task = wait_for_task(api, task_id)
    assert task["status"] == "failed", task


def test_cli_sandbox_commands(desktop_stack: Cluster) -> None:
    env = {**desktop_stack.env}
    corral = [sys.executable, "-m", "corral.cli"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*corral, *args], env=env, capture_output=True, text=True, timeout=120)

    created = cli("sandbox", "create", "--ttl", "300", "--json")
    assert created.returncode == 0, created.stderr
    sandbox_id = json.loads(created.stdout)["sandbox_id"]
    ran = cli("run", "--sandbox", sandbox_id, "-q", "echo in-the-sandbox > f.txt; cat f.txt")
    assert ran.returncode == 0 and ran.stdout == "in-the-sandbox\n", ran.stderr
    assert sandbox_id in cli("sandbox", "ls").stdout
    extended = cli("sandbox", "extend", sandbox_id, "--ttl", "900")
    assert extended.returncode == 0 and "expires at" in extended.stdout, extended.stderr
    assert cli("sandbox", "rm", sandbox_id).returncode == 0
    assert sandbox_id not in cli("sandbox", "ls").stdout
    assert "deleted" in cli("sandbox", "ls", "--all").stdout
    missing = cli("sandbox", "rm", "no-such-sandbox")
    assert missing.returncode == 2 and "NOT_FOUND" in missing.stderr
