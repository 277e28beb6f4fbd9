"""The gateway when the services behind it are down: 503s naming them, never a bare 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_stack import CURL_EXAMPLE, make_stack
from harness import Cluster


@pytest.fixture
def scheduler_only(tmp_path: Path) -> Iterator[Cluster]:
    yield from make_stack(tmp_path, "scheduler")


@pytest.fixture
def nothing_behind(tmp_path: Path) -> Iterator[Cluster]:
    yield from make_stack(tmp_path)


def test_healthz_names_the_service_that_is_down(scheduler_only: Cluster) -> None:
    # Memory down: degraded, not down (the gateway still schedules; test_health_degraded.py).
    response = httpx.get(scheduler_only.gateway_url + "/healthz", timeout=30)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["services"]["scheduler"] == "serving"
    assert body["services"]["memory"] != "serving"
    assert body["degraded"] == ["memory"]
    assert "memory" in body["message"]


def test_history_is_503_when_memory_is_down(scheduler_only: Cluster) -> None:
    with httpx.Client(base_url=scheduler_only.gateway_url, timeout=30) as api:
        task_id = api.post("/schedule", json=CURL_EXAMPLE).json()["task_id"]
        history = api.get(f"/v1/tasks/{task_id}/history")
        assert history.status_code == 503
        assert history.json()["error"]["message"].startswith("memory is not reachable")
        search = api.get("/v1/search", params={"q": "x"})
        assert search.status_code == 503


def test_requests_needing_the_scheduler_are_503_and_bad_input_still_400(
    nothing_behind: Cluster,
) -> None:
    with httpx.Client(base_url=nothing_behind.gateway_url, timeout=30) as api:
        health = api.get("/healthz")
        assert health.status_code == 503
        assert "scheduler" in health.json()["error"]["message"]
        assert "memory" in health.json()["error"]["message"]

        for response in (
            api.post("/schedule", json=CURL_EXAMPLE),
            api.get("/status", params={"task_id": "x"}),
            api.get("/v1/tasks"),
            api.get("/v1/tasks/x/events"),
        ):
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["code"] == "unavailable"
            assert error["message"].startswith("scheduler is not reachable")

        bad = api.post("/schedule", json={"steps": [{"tool": "bash"}]})
        assert bad.status_code == 400
