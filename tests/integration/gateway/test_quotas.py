"""Per-tenant quotas, against real processes: 429 with Retry-After and a message naming the
quota (RESOURCE_EXHAUSTED with the same message over gRPC). No executor: tasks stay
scheduled, so they count against the concurrent-task quota until cancelled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_stack import CURL_EXAMPLE, TEST_ENV, make_stack
from harness import Cluster
from tenant_stack import Key, create_key, first_admin_key

from corral.client import CorralClient
from corral.errors import QuotaExceeded
from corral.schema import TaskRequest

# One unfinished task at a time, and one submission per 100 s (a burst of one).
QUOTA_ENV = {
    **TEST_ENV,
    "CORRAL_AUTH": "keys",
    "CORRAL_QUOTA_MAX_TASKS": "1",
    "CORRAL_QUOTA_SUBMISSIONS_PER_SECOND": "0.01",
}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    data_dir: Path = tmp_path_factory.mktemp("quotas")
    yield from make_stack(data_dir, "memory", "scheduler", env=QUOTA_ENV)


@pytest.fixture(scope="module")
def api(limited: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=limited.gateway_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def admin(limited: Cluster) -> Key:
    return first_admin_key(limited)


def test_concurrent_tasks_then_submission_rate_are_429_naming_the_quota(
    limited: Cluster, api: httpx.Client, admin: Key
) -> None:
    dave = create_key(api, admin, "dave")
    first = api.post("/schedule", json=CURL_EXAMPLE, headers=dave.headers)
    assert first.status_code == 200, first.text

    busy = api.post("/schedule", json=CURL_EXAMPLE, headers=dave.headers)
    assert busy.status_code == 429
    assert busy.json()["error"]["code"] == "resource_exhausted"
    assert "quota max_tasks exceeded" in busy.json()["error"]["message"]
    assert int(busy.headers["Retry-After"]) >= 1

    cancelled = api.post(f"/v1/tasks/{first.json()['task_id']}/cancel", headers=dave.headers)
    assert cancelled.status_code == 200
    fast = api.post("/v1/tasks", json=CURL_EXAMPLE, headers=dave.headers)
    assert fast.status_code == 429
    assert "quota submissions_per_second exceeded" in fast.json()["error"]["message"]
    assert int(fast.headers["Retry-After"]) >= 1

    # Another tenant has its own quotas; the admin has none.
    erin = create_key(api, admin, "erin")
    assert api.post("/schedule", json=CURL_EXAMPLE, headers=erin.headers).status_code == 200
    for _ in range(3):
        assert api.post("/schedule", json=CURL_EXAMPLE, headers=admin.headers).status_code == 200


async def test_grpc_quota_refusals_are_resource_exhausted_with_the_same_message(
    limited: Cluster, api: httpx.Client, admin: Key
) -> None:
    frank = create_key(api, admin, "frank")
    async with CorralClient(limited.scheduler_address, limited.settings(), api_key=frank.secret) as client:
        await client.submit(TaskRequest.model_validate(CURL_EXAMPLE))
        with pytest.raises(QuotaExceeded, match="quota max_tasks exceeded: tenant 'frank'"):
            await client.submit(TaskRequest.model_validate(CURL_EXAMPLE))
