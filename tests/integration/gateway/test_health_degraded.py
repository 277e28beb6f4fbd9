"""/healthz tells degraded (memory down: 200, can still schedule) from down (scheduler
unreachable: 503), and the gateway serves again once a killed service is back: real
processes, kill -9."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from gateway_stack import CURL_EXAMPLE, make_stack
from harness import Cluster

# Long enough that gRPC's default reconnect backoff would have grown past several seconds.
OUTAGE_SECONDS = 8.0


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Cluster]:
    yield from make_stack(tmp_path, "memory", "scheduler")


def poll(condition: Callable[[], bool], what: str, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def test_memory_killed_is_degraded_and_the_gateway_still_schedules(stack: Cluster) -> None:
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as api:
        assert api.get("/healthz").json()["status"] == "ok"
        stack.services["memory"].stop(signal.SIGKILL)

        health = api.get("/healthz")
        assert health.status_code == 200
        body = health.json()
        assert body["status"] == "degraded"
        assert body["degraded"] == ["memory"]
        assert body["services"]["scheduler"] == "serving"
        assert body["services"]["memory"] != "serving"
        assert "memory" in body["message"] and "history" in body["message"]

        # What it says holds: scheduling works, history does not.
        scheduled = api.post("/schedule", json=CURL_EXAMPLE)
        assert scheduled.status_code == 200, scheduled.text
        task_id = scheduled.json()["task_id"]
        assert api.get("/status", params={"task_id": task_id}).status_code == 200
        assert api.get(f"/v1/tasks/{task_id}/history").status_code == 503

        time.sleep(OUTAGE_SECONDS)
        stack.start_memory()
        poll(lambda: api.get("/healthz").json()["status"] == "ok", "the gateway saw memory back")
        assert api.get(f"/v1/tasks/{task_id}/history").status_code == 200
        api.post(f"/v1/tasks/{task_id}/cancel")


def test_scheduler_killed_is_down_then_served_again_when_it_returns(stack: Cluster) -> None:
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as api:
        stack.services["scheduler"].stop(signal.SIGKILL)

        health = api.get("/healthz")
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "unavailable"
        assert body["services"]["memory"] == "serving"
        assert body["services"]["scheduler"] != "serving"
        assert "scheduler" in body["error"]["message"] and "memory" not in body["error"]["message"]
        assert api.get("/v1/tasks").status_code == 503

        time.sleep(OUTAGE_SECONDS)
        stack.start_scheduler()  # returns once it answers a health check
        poll(lambda: api.get("/v1/tasks").status_code == 200, "the gateway served the scheduler again")
        assert api.get("/healthz").json() == {
            "status": "ok",
            "services": {"scheduler": "serving", "memory": "serving"},
        }
        assert api.post("/schedule", json=CURL_EXAMPLE).status_code == 200
