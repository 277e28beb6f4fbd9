"""`corral up` end to end: the curl example through the gateway, `corral run`, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import time
from typing import Any

import httpx
from cli_helpers import CorralUp, corral_command, port_is_free, process_tree, still_alive

CURL_EXAMPLE = {
    "steps": [
        {"tool": "shell", "command": "ls -la /app"},
        {"tool": "python", "code": 'with open("hello.txt", "w") as f: f.write("Hello from the agent!")'},
        {"tool": "shell", "command": "cat hello.txt"},
    ]
}
TERMINAL = {"completed", "failed", "cancelled"}


def run_cli(up: CorralUp, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        corral_command(*args, "--url", up.gateway),  # the gateway, as from another machine
        env={**os.environ, "CORRAL_DATA_DIR": str(up.data_dir)},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_banner_names_every_url(corral_up: CorralUp) -> None:
    text = corral_up.text()
    assert corral_up.gateway in text
    for address in (corral_up.scheduler, corral_up.memory, corral_up.executor):
        assert address in text
    assert (corral_up.data_dir / "logs" / "scheduler.log").exists()


def test_every_service_s_metrics_answer_on_loopback_where_the_banner_says(corral_up: CorralUp) -> None:
    found = dict(re.findall(r"(scheduler|executor|memory) (http://127\.0\.0\.1:\d+/metrics)", corral_up.text()))
    assert sorted(found) == ["executor", "memory", "scheduler"], corral_up.text()
    for service, url in found.items():
        response = httpx.get(url, timeout=10)
        assert response.status_code == 200 and "corral_grpc_server_handling_seconds" in response.text, service
    assert "corral_tasks_queued" in httpx.get(found["scheduler"], timeout=10).text


def test_data_directory_secrets_are_the_operators_only(corral_up: CorralUp) -> None:
    """Logs, databases, certificates and the audit log are 0600 in 0700 directories (before:
    logs and databases were 0644, readable by every host user)."""
    data = corral_up.data_dir
    assert stat.S_IMODE((data / "logs").stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "pki").stat().st_mode) == 0o700
    private = [*(data / "logs").iterdir(), *data.glob("*.db"), data / "pki" / "ca.key"]
    assert len(private) >= 6, private
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path, oct(path.stat().st_mode))


def test_curl_example_through_the_gateway(corral_up: CorralUp) -> None:
    with httpx.Client(base_url=corral_up.gateway, timeout=30, trust_env=False) as http:
        response = http.post("/schedule", json=CURL_EXAMPLE)
        assert response.status_code == 200, response.text
        task_id = response.json()["task_id"]
        status: dict[str, Any] = {}
        for _ in range(600):  # bounded poll, not a timing assertion
            status = http.get("/status", params={"task_id": task_id}).json()
            if status["status"] in TERMINAL:
                break
            time.sleep(0.2)
    assert status["status"] == "completed", json.dumps(status, indent=2)
    assert [s["status"] for s in status["steps"]] == ["completed"] * 3
    assert status["steps"][2]["stdout"] == "Hello from the agent!"
    assert status["log_path"]


def test_corral_run_streams_output_and_exits_0(corral_up: CorralUp) -> None:
    result = run_cli(corral_up, "run", "echo first-step", "--python", "print(6 * 7)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["first-step", "42"]
    assert "completed" in result.stderr
    assert "step 2/2 python" in result.stderr


def test_corral_run_failing_step_exits_with_its_code_and_skips_the_rest(corral_up: CorralUp) -> None:
    result = run_cli(corral_up, "run", "echo oops >&2; exit 3", "echo never")
    assert result.returncode == 3, result.stderr  # the failed step's exit code
    assert "oops" in result.stderr
    assert "never" not in result.stdout
    assert "exit code 3" in result.stderr
    assert "failed" in result.stderr


def test_corral_run_task_file_json_and_status(corral_up: CorralUp) -> None:
    task_yaml = "steps:\n  - tool: write_file\n    path: a.txt\n    content: from yaml\n" \
                "  - tool: read_file\n    path: a.txt\n"
    result = run_cli(corral_up, "run", "-f", "-", "--json", stdin=task_yaml)
    assert result.returncode == 0, result.stderr
    final = json.loads(result.stdout)
    assert final["status"] == "completed"
    assert final["steps"][1]["stdout"] == "from yaml"

    status = run_cli(corral_up, "status", final["task_id"], "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["task_id"] == final["task_id"]

    listed = run_cli(corral_up, "ls", "--state", "completed")
    assert listed.returncode == 0, listed.stderr
    assert final["task_id"] in listed.stdout


def test_corral_run_sigint_cancels_the_task(corral_up: CorralUp) -> None:
    process = subprocess.Popen(
        corral_command("run", "echo started; sleep 300", "--url", corral_up.gateway),
        env={**os.environ, "CORRAL_DATA_DIR": str(corral_up.data_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "started"  # the step is running
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "cancelled" in stderr


def test_ctrl_c_stops_every_service_and_frees_the_ports(corral_up: CorralUp) -> None:
    # Runs last in this module: it takes the shared `corral up` down.
    tree = process_tree(corral_up.process.pid)
    assert len(tree) >= 4, tree
    corral_up.process.send_signal(signal.SIGINT)
    assert corral_up.process.wait(60) == 0, corral_up.text()
    assert [p for p in tree if still_alive(*p)] == []
    for port in corral_up.ports:
        assert port_is_free(port), port
    assert "corral: stopped" in corral_up.text()
