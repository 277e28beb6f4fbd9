"""The network API through the real gateway and scheduler (the drivers' enforcement is in
tests/integration/network/): `"network"` in and out in the same shape, bad rules named with a
400 at every door, PUT /v1/sandboxes/{id}/network's refusals, and /metrics."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import grpc
import httpx
import pytest
from harness import REPO, Cluster

from corral import Sandbox, errors
from corral.client import CorralClient
from corral.errors import InvalidArgument, SandboxNotFound
from corral.v1 import sandbox_pb2, sandbox_pb2_grpc, task_pb2

ONE_STEP = [{"tool": "shell", "command": "true"}]
RULES = {"allow": ["allowed.test", "*.allowed.test", "203.0.113.0/24"], "deny": ["denied.test"]}


def test_a_task_reads_back_the_network_it_asked_for(api: httpx.Client) -> None:
    for network, shown in ((RULES, RULES), (True, True), (False, False), ({}, True)):
        created = api.post("/v1/tasks", json={"steps": ONE_STEP, "network": network})
        assert created.status_code == 201, created.text
        task_id = created.json()["task_id"]
        assert api.get(f"/v1/tasks/{task_id}").json()["network"] == shown
        assert api.get("/status", params={"task_id": task_id}).json()["network"] == shown
        api.post(f"/v1/tasks/{task_id}/cancel")


@pytest.mark.parametrize("path", ["/v1/tasks", "/v1/sandboxes"])
@pytest.mark.parametrize(
    ("network", "words"),
    [
        ({"allow": ["allowed.test", "169.254.169.254"]}, "allow[1]: '169.254.169.254' is never reachable"),
        ({"allow": ["exa mple.com"]}, "allow[0]: 'exa mple.com' is neither an address"),
        ({"deny": ["10.0.0.0/33"]}, "deny[0]: '10.0.0.0/33' is not a valid address or CIDR"),
        ({"allow": ["*.com"]}, "allow[0]: '*.com' is too broad a wildcard"),
        ({"allow": ["pypi.org"], "block": []}, "unknown key(s) ['block']"),
    ],
)
def test_a_bad_rule_is_a_400_naming_it(api: httpx.Client, path: str, network: object, words: str) -> None:
    body = {"steps": ONE_STEP, "network": network} if path == "/v1/tasks" else {"network": network}
    reply = api.post(path, json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == "invalid_argument"
    assert error["message"].startswith("network: ") and words in error["message"], error["message"]
    assert error["details"] == [{"field": "network", "message": error["message"].removeprefix("network: ")}]


def test_put_network_refuses_bad_bodies_and_unknown_sandboxes(api: httpx.Client) -> None:
    unknown = "0" * 32
    bad = api.put(f"/v1/sandboxes/{unknown}/network", json={"allow": ["http://allowed.test/"]})
    assert bad.status_code == 400, bad.text
    assert "allow[0]: 'http://allowed.test/'" in bad.json()["error"]["message"]
    wrapped = api.put(f"/v1/sandboxes/{unknown}/network", json={"network": {"allow": []}})
    assert wrapped.status_code == 400 and "network: unknown field" in wrapped.json()["error"]["message"]
    not_object = api.put(f"/v1/sandboxes/{unknown}/network", json=["allowed.test"])
    assert not_object.status_code == 400 and "JSON object" in not_object.json()["error"]["message"]
    missing = api.put(f"/v1/sandboxes/{unknown}/network", json={"allow": ["allowed.test"]})
    assert missing.status_code == 404, missing.text


def _samples(text: str, name: str) -> dict[str, float]:
    """The samples of one metric in Prometheus text: {labels: value}."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(\{{.*\}})? (\S+)", line)
        if match:
            found[match.group(1) or ""] = float(match.group(2))
    return found


def test_metrics_count_the_gateways_requests(api: httpx.Client) -> None:
    api.post("/v1/tasks", json={"steps": ONE_STEP, "network": {"allow": ["a b"]}})
    scraped = api.get("/metrics")
    assert scraped.status_code == 200, scraped.text
    assert scraped.headers["content-type"].startswith("text/plain")
    requests = _samples(scraped.text, "corral_gateway_requests_total")
    # By route template: a task id does not make a series of its own.
    assert requests['{method="POST",route="/v1/tasks",status="400"}'] >= 1
    assert not any("0000" in labels for labels in requests)
    # No executor here: the network families are declared and empty.
    assert "# TYPE corral_sandbox_network_refused_connections_total counter" in scraped.text
    assert "# TYPE corral_sandbox_network_refused_lookups_total counter" in scraped.text


def test_a_sandbox_without_network_cannot_be_given_rules(full_api: httpx.Client) -> None:
    created = full_api.post("/v1/sandboxes", json={"ttl": 120})
    assert created.status_code == 201, created.text
    sandbox_id = created.json()["sandbox_id"]
    try:
        assert created.json()["network"] is False
        refused = full_api.put(f"/v1/sandboxes/{sandbox_id}/network", json={"allow": ["allowed.test"]})
        assert refused.status_code == 409, refused.text
        assert "created without network" in refused.json()["error"]["message"]
        shown = full_api.get(f"/v1/sandboxes/{sandbox_id}").json()
        assert shown["network"] is False and shown["network_status"] is None
    finally:
        full_api.delete(f"/v1/sandboxes/{sandbox_id}")


def test_a_sandbox_reads_back_its_rules_and_the_executors_counters_are_scraped(
    full_stack: Cluster, full_api: httpx.Client
) -> None:
    created = full_api.post("/v1/sandboxes", json={"ttl": 120, "network": RULES})
    assert created.status_code == 201, created.text
    sandbox_id = created.json()["sandbox_id"]
    try:
        assert created.json()["network"] == RULES
        shown = full_api.get(f"/v1/sandboxes/{sandbox_id}").json()
        assert shown["network"] == RULES
        status = shown["network_status"]
        # (Counted from the sandbox's start: its kernel's own multicast can be among them.)
        assert status is not None and status["refused_connections"] >= 0 and status["refused_lookups"] >= 0
        assert status["rules"] == RULES
        listed = full_api.get("/v1/sandboxes").json()["sandboxes"]
        assert [s["network"] for s in listed if s["sandbox_id"] == sandbox_id] == [RULES]
    finally:
        full_api.delete(f"/v1/sandboxes/{sandbox_id}")
    scraped = full_api.get("/metrics").text
    connections = _samples(scraped, "corral_sandbox_network_refused_connections_total")
    lookups = _samples(scraped, "corral_sandbox_network_refused_lookups_total")
    assert len(connections) == len(lookups) == 1, scraped
    (labels,) = connections
    assert 'driver="bubblewrap"' in labels and 'executor_id="executor-' in labels
    assert _samples(scraped, "corral_executor_up") == {labels: 1.0}


async def test_the_scheduler_refuses_bad_rules_sent_over_grpc(stack: Cluster) -> None:
    """Past the gateway's models too: a TaskSpec or a rule change with a bad rule is
    INVALID_ARGUMENT naming it."""
    steps = [task_pb2.Step(shell=task_pb2.ShellAction(command="true"))]
    bad = task_pb2.TaskSpec(steps=steps, network=True, network_rules=task_pb2.NetworkRules(allow=["fe80::1"]))
    async with CorralClient(stack.scheduler_address, stack.settings()) as client:
        with pytest.raises(InvalidArgument, match=r"network.allow\[0\]: 'fe80::1' is never reachable"):
            await client.submit(bad)
        stub = sandbox_pb2_grpc.SandboxServiceStub(stack.aio_channel(stack.scheduler_address))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.UpdateSandboxNetwork(
                sandbox_pb2.UpdateSandboxNetworkRequest(
                    sandbox_id="0" * 32, rules=task_pb2.NetworkRules(deny=["not a rule"])
                )
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "network.deny[0]: 'not a rule'" in (caught.value.details() or "")
        with pytest.raises(SandboxNotFound):
            await client.update_sandbox_network("0" * 32, allow=["allowed.test"])


def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral.cli", "sandbox", *args, "--url", cluster.gateway_url],
        cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=120,
    )


def test_the_cli_creates_shows_and_changes_a_sandboxs_rules(full_stack: Cluster) -> None:
    created = _cli(full_stack, "create", "--allow", "allowed.test", "--ttl", "120", "--json")
    assert created.returncode == 0, created.stderr
    sandbox_id = json.loads(created.stdout)["sandbox_id"]
    assert json.loads(created.stdout)["network"] == {"allow": ["allowed.test"], "deny": []}
    try:
        shown = _cli(full_stack, "network", sandbox_id)
        assert shown.returncode == 0, shown.stderr
        assert "allow: allowed.test" in shown.stdout and "refused:" in shown.stdout
        changed = _cli(full_stack, "network", sandbox_id, "--allow", "other.test", "--deny", "203.0.113.66", "--json")
        assert changed.returncode == 0, changed.stderr
        document = json.loads(changed.stdout)
        assert document["network"] == {"allow": ["other.test"], "deny": ["203.0.113.66"]}
        # The rules in force, as the executor understood them (an address is its /32).
        assert document["network_status"]["rules"] == {"allow": ["other.test"], "deny": ["203.0.113.66/32"]}
        bad = _cli(full_stack, "network", sandbox_id, "--allow", "127.0.0.0/8")
        assert bad.returncode == 2 and "allow[0]: '127.0.0.0/8' is never reachable" in bad.stderr, bad.stderr
        reset = _cli(full_stack, "network", sandbox_id, "--default", "--json")
        assert reset.returncode == 0 and json.loads(reset.stdout)["network"] is True, reset.stderr
    finally:
        _cli(full_stack, "rm", sandbox_id)


def test_the_rest_sdk_changes_a_sandboxs_rules(full_stack: Cluster) -> None:
    with Sandbox.create(network={"allow": ["allowed.test"]}, ttl=120, url=full_stack.gateway_url) as sandbox:
        assert sandbox.info["network"] == {"allow": ["allowed.test"], "deny": []}
        sandbox.set_network(allow=["other.test"], deny=["denied.test"])
        assert sandbox.refresh()["network"] == {"allow": ["other.test"], "deny": ["denied.test"]}
        with pytest.raises(errors.InvalidArgument, match=r"allow\[0\]: 'http://x' is not a valid address or CIDR"):
            sandbox.set_network(allow=["http://x"])
    with Sandbox.create(ttl=120, url=full_stack.gateway_url) as offline, pytest.raises(
        errors.FailedPrecondition, match="created without network"
    ):
        offline.set_network(allow=["allowed.test"])
