"""History is at-least-once and applied once: the memory service killed under load, or cut off
from the executor, or the executor restarted meanwhile, and every task's history still arrives,
each entry once. Counts of tasks and entries are asserted, never times."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from harness import Cluster
from memory_link import MemoryLink, history_stack, kill9, start_executor, wait_until

pytestmark = pytest.mark.slow

TASKS = 100
# One shell step: task_started, action, result, task_finished.
EXPECTED_KINDS = ["task_started", "action", "result", "task_finished"]


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Cluster, MemoryLink]]:
    """One stack for the module (each test leaves it whole): the executor reaches the memory
    service through a link the tests can cut."""
    with history_stack(link=True, CORRAL_EXECUTOR_CAPACITY="8") as (cluster, link):
        assert link is not None
        yield cluster, link


@pytest.fixture
def api(stack: tuple[Cluster, MemoryLink]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack[0].gateway_url, timeout=30) as client:
        yield client


def history(api: httpx.Client, task_id: str) -> dict[str, Any]:
    return history_of(api.get(f"/v1/tasks/{task_id}/history"))


def histories(api: httpx.Client, task_ids: list[str]) -> dict[str, dict[str, Any]]:
    with ThreadPoolExecutor(8) as pool:
        return dict(zip(task_ids, pool.map(lambda t: history(api, t), task_ids), strict=True))


def delivered(api: httpx.Client, task_ids: list[str]) -> dict[str, dict[str, Any]] | None:
    """Every task's history once all are complete; None before (or while the gateway still
    answers 5xx for a memory service it has just seen come back)."""
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda t: api.get(f"/v1/tasks/{t}/history"), task_ids))
    if any(r.status_code >= 500 for r in responses):
        return None
    found = {t: history_of(r) for t, r in zip(task_ids, responses, strict=True)}
    return found if all(f["complete"] for f in found.values()) else None


def history_of(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return dict(response.json())


def submit(api: httpx.Client, count: int) -> list[str]:
    def one(n: int) -> str:
        response = api.post("/v1/tasks", json={"steps": [{"tool": "shell", "command": f"echo task-{n}"}]})
        assert response.status_code == 201, response.text
        return str(response.json()["task_id"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def status(api: httpx.Client, task_ids: list[str]) -> Counter[str]:
    with ThreadPoolExecutor(8) as pool:
        return Counter(pool.map(lambda t: str(api.get(f"/v1/tasks/{t}").json()["status"]), task_ids))


def assert_whole(task_id: str, found: dict[str, Any]) -> None:
    events = found["events"]
    assert [e["kind"] for e in events] == EXPECTED_KINDS, (task_id, events)
    assert [e["sequence"] for e in events] == [1, 2, 3, 4]
    assert found["complete"] and not found["delivering"]


@pytest.mark.timeout(180)
def test_memory_killed_under_load_loses_no_history_and_stores_none_twice(
    stack: tuple[Cluster, MemoryLink], api: httpx.Client
) -> None:
    cluster, _ = stack
    task_ids = submit(api, TASKS)
    completed_before = wait_until(lambda: (c := status(api, task_ids)["completed"]) >= 10 and c, "10 completed")
    kill9(cluster.services["memory"])
    # Tasks go on completing while their history has nowhere to go.
    wait_until(lambda: status(api, task_ids)["completed"] >= completed_before + 20, "20 more completed, memory down")
    cluster.start_memory()  # same address, same database
    wait_until(lambda: status(api, task_ids)["completed"] == TASKS, "every task completed")
    found = wait_until(lambda: delivered(api, task_ids), "every task's history complete", timeout=90, every=1.0)
    for task_id, one in found.items():
        assert_whole(task_id, one)
    # Not one entry twice: 4 rows per task, 4 x TASKS in all.
    assert Counter(len(one["events"]) for one in found.values()) == Counter({len(EXPECTED_KINDS): TASKS})
    assert "memory service reachable again" in cluster.services["executor"].log()


@pytest.mark.timeout(150)
def test_history_is_delivering_while_held_and_its_spool_survives_an_executor_restart(
    stack: tuple[Cluster, MemoryLink], api: httpx.Client
) -> None:
    cluster, link = stack
    link.cut()  # the executor cannot reach the memory service; the gateway still can
    try:
        task_ids = submit(api, 3)
        wait_until(lambda: status(api, task_ids)["completed"] == len(task_ids), "the tasks completed")
        for found in histories(api, task_ids).values():
            assert found["delivering"] and not found["complete"] and found["events"] == []

        executor = cluster.services["executor"]
        executor.stop()  # SIGTERM: what it could not deliver stays in its spool
        assert executor.proc.returncode == 0
        spool = cluster.data_dir / "history-spool" / "executor-fault.spool"
        assert spool.stat().st_size > 0
        start_executor(cluster, link)  # back, with the memory service still out of reach
        # It reloaded its spool: delivering again once it has registered, nothing arrived yet.
        held = wait_until(
            lambda: (found := histories(api, task_ids)) and all(f["delivering"] for f in found.values()) and found,
            "the restarted executor's tasks delivering",
        )
        assert all(f["events"] == [] and not f["complete"] for f in held.values())
    finally:
        link.restore()
    for task_id, found in wait_until(lambda: delivered(api, task_ids), "spooled history delivered").items():
        assert_whole(task_id, found)
    assert "history spooled by an earlier run will be delivered" in cluster.services["executor"].log()
    wait_until(lambda: spool.stat().st_size == 0, "the spool emptied once delivered")
