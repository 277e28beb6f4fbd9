"""A sandbox's quick calls going straight from the gateway to its executor (gateway/call_routes.py),
against real processes with API keys: the route is per sandbox and key, so another tenant's key
on a routed sandbox is still 404 and nothing runs; a key revoked, or a sandbox deleted, through
the gateway stops at once; a sandbox ended behind the gateway's back (deleted at the scheduler)
makes the executor refuse and the call goes the relayed way, which says it ended. The routes
last 60 s here, so none of this is a route that merely expired."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_stack import TEST_ENV, start_gateway
from harness import Cluster, free_port
from tenant_stack import Key, create_key, first_admin_key

from corral.api_keys import metadata_for
from corral.v1 import sandbox_pb2, sandbox_pb2_grpc

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def keyed() -> Iterator[Cluster]:
    # Under /tmp, not pytest's root-only tmp tree: sandboxes run as an unprivileged host uid.
    data_dir = Path(tempfile.mkdtemp(prefix="corral-direct-calls-test-"))
    data_dir.chmod(0o755)
    cluster = Cluster.new(
        data_dir, **TEST_ENV, CORRAL_AUTH="keys", CORRAL_GATEWAY_CALL_ROUTE_SECONDS="60",
        CORRAL_SCHEDULER_METRICS_ADDRESS=f"127.0.0.1:{free_port()}",
    )
    try:
        for name in ("memory", "scheduler", "executor"):
            getattr(cluster, f"start_{name}")()
        start_gateway(cluster)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def api(keyed: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keyed.gateway_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def admin(keyed: Cluster) -> Key:
    return first_admin_key(keyed)


def new_sandbox(api: httpx.Client, key: Key) -> str:
    reply = api.post("/v1/sandboxes", json={"ttl": 600}, headers=key.headers)
    assert reply.status_code == 201, reply.text
    return f"/v1/sandboxes/{reply.json()['sandbox_id']}"


def run(api: httpx.Client, sandbox: str, key: Key, command: str) -> httpx.Response:
    return api.post(f"{sandbox}/commands", json={"tool": "shell", "command": command}, headers=key.headers)


def relayed_commands(keyed: Cluster) -> float:
    """How many RunSandboxCommand calls the scheduler has relayed (its Prometheus counter)."""
    text = httpx.get(f"http://{keyed.env['CORRAL_SCHEDULER_METRICS_ADDRESS']}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith("corral_grpc_server_handling_seconds_count") and 'method="RunSandboxCommand"' in line
    )


def test_calls_skip_the_scheduler_and_are_recorded(keyed: Cluster, api: httpx.Client, admin: Key) -> None:
    alice = create_key(api, admin, "alice-direct")
    sandbox = new_sandbox(api, alice)
    before = relayed_commands(keyed)
    for i in range(3):
        reply = run(api, sandbox, alice, f"echo direct-{i}")
        assert reply.status_code == 200 and reply.json()["stdout"] == f"direct-{i}\n", reply.text
    assert relayed_commands(keyed) == before  # straight to the executor
    events = api.get(f"{sandbox}/history?limit=1000", headers=alice.headers).json()["events"]
    for _ in range(50):  # the history entry is written in the background
        if any("direct-2" in e["action"] for e in events):
            break
        events = api.get(f"{sandbox}/history?limit=1000", headers=alice.headers).json()["events"]
    assert any("direct-2" in e["action"] and e["stdout"] == "direct-2\n" for e in events), events[-3:]


def test_another_tenants_key_on_a_routed_sandbox_is_404_and_runs_nothing(api: httpx.Client, admin: Key) -> None:
    alice, bob = create_key(api, admin, "alice-routed"), create_key(api, admin, "bob-routed")
    sandbox = new_sandbox(api, alice)
    assert run(api, sandbox, alice, "true").status_code == 200  # alice's route is made
    attacks = [
        run(api, sandbox, bob, "touch pwned"),
        api.get(f"{sandbox}/files/stat", params={"path": "."}, headers=bob.headers),
        api.post(f"{sandbox}/files/mkdir", json={"path": "pwned-dir"}, headers=bob.headers),
        api.get(f"{sandbox}/commands/0", headers=bob.headers),
    ]
    for attack in attacks:
        assert attack.status_code == 404, attack.text
        assert attack.json()["error"]["message"] == f"no sandbox with id {sandbox.rsplit('/', 1)[1]!r}"
    for name in ("pwned", "pwned-dir"):
        missing = api.get(f"{sandbox}/files/stat", params={"path": name}, headers=alice.headers)
        assert missing.status_code == 404 and "no sandbox" not in missing.text, missing.text


def test_a_key_revoked_through_the_gateway_stops_at_once(api: httpx.Client, admin: Key) -> None:
    carol = create_key(api, admin, "carol-routed")
    sandbox = new_sandbox(api, carol)
    assert run(api, sandbox, carol, "true").status_code == 200  # routed
    assert api.delete(f"/v1/keys/{carol.key_id}", headers=admin.headers).status_code == 200
    after = run(api, sandbox, carol, "touch after-revoke")
    assert after.status_code == 401, after.text
    assert after.json()["error"]["message"] == "the API key is unknown or revoked"
    assert api.get(f"{sandbox}/files/stat", params={"path": "after-revoke"}, headers=admin.headers).status_code == 404


def test_a_sandbox_deleted_through_the_gateway_stops_at_once(api: httpx.Client, admin: Key) -> None:
    dave = create_key(api, admin, "dave-routed")
    sandbox = new_sandbox(api, dave)
    assert run(api, sandbox, dave, "true").status_code == 200
    assert api.delete(sandbox, headers=dave.headers).status_code == 200
    after = run(api, sandbox, dave, "true")
    assert after.status_code == 409 and "deleted" in after.json()["error"]["message"], after.text


def test_a_sandbox_ended_behind_the_gateways_back_is_reported_ended(keyed: Cluster, api: httpx.Client, admin: Key) -> None:
    erin = create_key(api, admin, "erin-routed")
    sandbox = new_sandbox(api, erin)
    assert run(api, sandbox, erin, "true").status_code == 200  # routed for 60 s
    with keyed.channel(keyed.scheduler_address, "admin") as channel:  # not through this gateway
        sandbox_pb2_grpc.SandboxServiceStub(channel).DeleteSandbox(
            sandbox_pb2.DeleteSandboxRequest(sandbox_id=sandbox.rsplit("/", 1)[1]),
            metadata=metadata_for(admin.secret), timeout=30,
        )
    # The executor no longer has it: the route is dropped, the relayed way says why.
    for call in (lambda: run(api, sandbox, erin, "true"),
                 lambda: api.get(f"{sandbox}/files/stat", params={"path": "."}, headers=erin.headers)):
        after = call()
        assert after.status_code == 409 and "deleted" in after.json()["error"]["message"], after.text
