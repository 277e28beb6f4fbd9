"""The whole path through the gateway: REST -> scheduler -> executor (bubblewrap) -> memory."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from typing import Any

import httpx
from gateway_stack import CURL_EXAMPLE
from harness import Cluster
from sse_client import events

# DESIGN.md §1, verbatim.
CURL_SCHEDULE = textwrap.dedent(
    """\
    curl -X POST http://localhost:8000/schedule -H "Content-Type: application/json" -d '{
      "steps": [
        {"tool": "shell",  "command": "ls -la /app"},
        {"tool": "python", "code": "with open(\\"hello.txt\\", \\"w\\") as f: f.write(\\"Hello from the agent!\\")"},
        {"tool": "shell",  "command": "cat hello.txt"}
      ]}'
    """
)


def wait_finished(api: httpx.Client, task_id: str) -> dict[str, Any]:
    """Follows the task's SSE stream to its end, then returns the final status."""
    with api.stream("GET", f"/v1/tasks/{task_id}/events") as response:
        assert response.status_code == 200
        for _ in events(response):
            pass
    status: dict[str, Any] = api.get("/status", params={"task_id": task_id}).json()
    return status


def test_the_curl_example_completes_and_prints_hello(full_stack: Cluster) -> None:
    port = full_stack.env["CORRAL_GATEWAY_PORT"]
    command = CURL_SCHEDULE.replace("localhost:8000", f"localhost:{port}")
    scheduled = subprocess.run(
        ["/bin/sh", "-c", command.rstrip() + " --silent --show-error"],
        capture_output=True,
        text=True,
        check=True,
    )
    body = json.loads(scheduled.stdout)
    assert list(body) == ["task_id"]
    task_id = body["task_id"]

    with httpx.Client(base_url=full_stack.gateway_url, timeout=120) as api:
        wait_finished(api, task_id)
    status_out = subprocess.run(
        ["curl", "--silent", "--show-error", f"http://localhost:{port}/status?task_id={task_id}"],
        capture_output=True,
        text=True,
        check=True,
    )
    task = json.loads(status_out.stdout)
    assert task["status"] == "completed", task
    assert [s["status"] for s in task["steps"]] == ["completed"] * 3
    assert [s["exit_code"] for s in task["steps"]] == [0, 0, 0]
    assert task["steps"][2]["stdout"] == "Hello from the agent!"
    assert task["log_path"] == f"/tasks/{task_id}/agent.log"
    for step in task["steps"]:
        assert step["duration_seconds"] >= 0
        assert step["stdout_truncated"] is False and step["stderr_truncated"] is False


def test_events_carry_steps_and_output_in_order(full_api: httpx.Client) -> None:
    body = {
        "steps": [
            {"tool": "shell", "command": "echo one; echo two >&2"},
            {"tool": "shell", "command": "exit 3"},
            {"tool": "shell", "command": "echo never"},
        ]
    }
    task_id = full_api.post("/v1/tasks", json=body).json()["task_id"]
    with full_api.stream("GET", f"/v1/tasks/{task_id}/events") as response:
        frames = list(events(response))
    kinds = [f.event for f in frames]
    assert kinds[0] == "scheduled" and "started" in kinds and kinds[-1] == "finished"
    assert kinds.index("step_started") < kinds.index("output") < kinds.index("step_finished")
    outputs = [f.json() for f in frames if f.event == "output"]
    assert "one\n" in "".join(o["data"] for o in outputs if o["stream"] == "stdout")
    assert "two\n" in "".join(o["data"] for o in outputs if o["stream"] == "stderr")
    finished = [f.json()["result"] for f in frames if f.event == "step_finished"]
    assert [r["index"] for r in finished][:2] == [0, 1]
    assert finished[1]["exit_code"] == 3 and finished[1]["status"] == "failed"
    assert frames[-1].json()["status"] == "failed"

    task = full_api.get(f"/v1/tasks/{task_id}").json()
    assert [s["status"] for s in task["steps"]] == ["completed", "failed", "skipped"]


def test_history_and_search_show_what_the_executor_recorded(full_api: httpx.Client) -> None:
    marker = f"giraffe-{time.monotonic_ns()}"
    body = {"steps": [{"tool": "shell", "command": f"echo {marker}"}]}
    task_id = full_api.post("/v1/tasks", json=body).json()["task_id"]
    assert wait_finished(full_api, task_id)["status"] == "completed"

    history = full_api.get(f"/v1/tasks/{task_id}/history").json()["events"]
    assert any(marker in e["action"] for e in history if e["kind"] == "action")
    results = [e for e in history if e["kind"] == "result"]
    assert results and marker in results[-1]["stdout"] and results[-1]["exit_code"] == 0

    hits = full_api.get("/v1/search", params={"q": marker}).json()["hits"]
    assert {h["task_id"] for h in hits} == {task_id}


def test_cancelling_a_running_task_stops_it(full_api: httpx.Client) -> None:
    body = {"steps": [{"tool": "shell", "command": "echo started; sleep 300"}]}
    task_id = full_api.post("/v1/tasks", json=body).json()["task_id"]
    with full_api.stream("GET", f"/v1/tasks/{task_id}/events") as response:
        stream = events(response)
        for frame in stream:
            if frame.event == "output":
                break
        cancelled = full_api.post(f"/v1/tasks/{task_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        rest = list(stream)
    assert rest[-1].event == "finished" and rest[-1].json()["status"] == "cancelled"
    task = full_api.get(f"/v1/tasks/{task_id}").json()
    assert task["status"] == "cancelled"
    assert task["steps"][0]["status"] in ("cancelled", "failed")


def test_v1_create_returns_the_task_and_runs_it(full_api: httpx.Client) -> None:
    created = full_api.post("/v1/tasks", json=CURL_EXAMPLE)
    assert created.status_code == 201
    final = wait_finished(full_api, created.json()["task_id"])
    assert final["status"] == "completed"
    assert final["steps"][2]["stdout"] == "Hello from the agent!"
