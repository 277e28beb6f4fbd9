"""API keys and tenants at the edge, against real processes with CORRAL_AUTH=keys: a tenant
sees, watches, cancels, lists, searches and runs only in its own tasks and sandboxes (another
tenant's id answers 404 exactly as an unknown one), a missing or revoked key is 401, an admin
key sees all, and the audit log records it all without a key in it."""

from __future__ import annotations

import json
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_stack import CURL_EXAMPLE, TEST_ENV, start_gateway
from harness import Cluster
from sse_client import events
from tenant_stack import Key, corral_cli, create_key, first_admin_key

from corral.client import CorralClient
from corral.errors import TaskNotFound, Unauthenticated

KEYED_ENV = {**TEST_ENV, "CORRAL_AUTH": "keys", "CORRAL_QUOTA_MAX_SANDBOXES": "1"}
UNKNOWN_ID = "0" * 32


@pytest.fixture(scope="module")
def keyed() -> Iterator[Cluster]:
    # Under /tmp, not pytest's root-only tmp tree: sandboxes run as an unprivileged host uid.
    data_dir = Path(tempfile.mkdtemp(prefix="corral-tenants-test-"))
    data_dir.chmod(0o755)
    cluster = Cluster.new(data_dir, **KEYED_ENV)
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
    with httpx.Client(base_url=keyed.gateway_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def admin(keyed: Cluster) -> Key:
    return first_admin_key(keyed)


@pytest.fixture(scope="module")
def alice(api: httpx.Client, admin: Key) -> Key:
    return create_key(api, admin, "alice")


@pytest.fixture(scope="module")
def bob(api: httpx.Client, admin: Key) -> Key:
    return create_key(api, admin, "bob")


@pytest.fixture(scope="module")
def alice_task(api: httpx.Client, alice: Key) -> str:
    """A finished task of alice's (the seed's curl example, with her key)."""
    reply = api.post("/schedule", json=CURL_EXAMPLE, headers=alice.headers)
    assert reply.status_code == 200, reply.text
    task_id: str = reply.json()["task_id"]
    with api.stream("GET", f"/v1/tasks/{task_id}/events", headers=alice.headers) as stream:
        assert stream.status_code == 200
        for _ in events(stream):
            pass
    return task_id


def test_every_route_but_health_and_docs_needs_a_key(api: httpx.Client) -> None:
    for method, path in [
        ("POST", "/schedule"), ("GET", f"/status?task_id={UNKNOWN_ID}"), ("GET", "/v1/tasks"),
        ("POST", "/v1/tasks"), ("GET", f"/v1/tasks/{UNKNOWN_ID}"), ("GET", f"/v1/tasks/{UNKNOWN_ID}/events"),
        ("POST", f"/v1/tasks/{UNKNOWN_ID}/cancel"), ("GET", f"/v1/tasks/{UNKNOWN_ID}/history"),
        ("GET", "/v1/search?q=x"), ("GET", "/v1/sandboxes"), ("POST", "/v1/sandboxes"),
        ("GET", "/v1/keys"), ("GET", f"/v1/sandboxes/{UNKNOWN_ID}/vnc/"),
        ("PUT", f"/v1/sandboxes/{UNKNOWN_ID}/network"), ("GET", "/metrics"),
    ]:
        body = {} if path.endswith(("/v1/sandboxes", "/network")) else CURL_EXAMPLE if method == "POST" and "cancel" not in path else None
        for headers in ({}, {"Authorization": "Bearer crl_not-a-key"}):
            reply = api.request(method, path, json=body, headers=headers)
            if path.endswith("/vnc/"):
                # The desktop answers for the sandbox first (unknown: 404) as before keys.
                assert reply.status_code == 404, (method, path, reply.text)
                continue
            assert reply.status_code == 401, (method, path, headers, reply.text)
            assert reply.headers["WWW-Authenticate"].startswith("Bearer"), (method, path)
            assert reply.json()["error"]["code"] == "unauthenticated"
    assert api.get("/healthz").status_code == 200
    assert api.get("/openapi.json").status_code == 200


def test_a_tenant_sees_only_its_own_tasks_and_another_tenants_answer_as_unknown(
    api: httpx.Client, alice: Key, bob: Key, admin: Key, alice_task: str
) -> None:
    mine = api.get("/status", params={"task_id": alice_task}, headers=alice.headers)
    assert mine.status_code == 200 and mine.json()["status"] == "completed"
    assert mine.json()["tenant_id"] == "alice"

    unknown = api.get("/status", params={"task_id": UNKNOWN_ID}, headers=bob.headers)
    assert unknown.status_code == 404
    for method, path in [
        ("GET", f"/status?task_id={alice_task}"),
        ("GET", f"/v1/tasks/{alice_task}"),
        ("GET", f"/v1/tasks/{alice_task}/events"),
        ("GET", f"/v1/tasks/{alice_task}/history"),
        ("POST", f"/v1/tasks/{alice_task}/cancel"),
        ("DELETE", f"/v1/tasks/{alice_task}"),
        ("GET", f"/v1/search?q=Hello&task_id={alice_task}"),
    ]:
        theirs = api.request(method, path, headers=bob.headers)
        assert theirs.status_code == 404, (method, path, theirs.text)
        # Exactly as an unknown id: the same message with the id swapped.
        assert theirs.json()["error"]["message"] == unknown.json()["error"]["message"].replace(UNKNOWN_ID, alice_task)

    assert alice_task not in {t["task_id"] for t in api.get("/v1/tasks", headers=bob.headers).json()["tasks"]}
    assert alice_task in {t["task_id"] for t in api.get("/v1/tasks", headers=alice.headers).json()["tasks"]}
    assert alice_task in {t["task_id"] for t in api.get("/v1/tasks", headers=admin.headers).json()["tasks"]}
    assert api.get(f"/v1/tasks/{alice_task}", headers=admin.headers).status_code == 200


def test_search_returns_only_the_tenants_own_history(
    api: httpx.Client, alice: Key, bob: Key, admin: Key, alice_task: str
) -> None:
    def hits(key: Key) -> set[str]:
        reply = api.get("/v1/search", params={"q": "Hello from the agent"}, headers=key.headers)
        assert reply.status_code == 200, reply.text
        return {hit["task_id"] for hit in reply.json()["hits"]}

    assert alice_task in hits(alice)
    assert alice_task in hits(admin)
    assert alice_task not in hits(bob)


async def test_the_grpc_api_takes_the_same_keys(keyed: Cluster, alice: Key, bob: Key, alice_task: str) -> None:
    async with CorralClient(keyed.scheduler_address, keyed.settings(), api_key="") as anonymous:
        with pytest.raises(Unauthenticated):
            await anonymous.get(alice_task)
    async with CorralClient(keyed.scheduler_address, keyed.settings(), api_key=bob.secret) as client:
        with pytest.raises(TaskNotFound):
            await client.get(alice_task)
        with pytest.raises(TaskNotFound):
            await client.cancel(alice_task)
        with pytest.raises(TaskNotFound):
            async for _ in client.watch(alice_task):
                pass
        listed, _ = await client.list()
        assert alice_task not in {t.task_id for t in listed}
    async with CorralClient(keyed.scheduler_address, keyed.settings(), api_key=alice.secret) as client:
        assert (await client.get(alice_task)).tenant_id == "alice"


def test_sandboxes_belong_to_their_tenant(api: httpx.Client, alice: Key, bob: Key, admin: Key) -> None:
    created = api.post("/v1/sandboxes", json={"ttl": 300}, headers=alice.headers)
    assert created.status_code == 201, created.text
    sandbox_id = created.json()["sandbox_id"]
    try:
        step = {"steps": [{"tool": "shell", "command": "echo ran-in-sandbox"}], "sandbox_id": sandbox_id}
        unknown = api.post("/v1/tasks", json={**step, "sandbox_id": UNKNOWN_ID}, headers=bob.headers)
        assert unknown.status_code == 404
        # Bob cannot run code in, read, extend, delete or open alice's sandbox.
        theirs = api.post("/v1/tasks", json=step, headers=bob.headers)
        assert theirs.status_code == 404, theirs.text
        assert theirs.json()["error"]["message"] == unknown.json()["error"]["message"].replace(UNKNOWN_ID, sandbox_id)
        for method, path in [
            ("GET", f"/v1/sandboxes/{sandbox_id}"),
            ("POST", f"/v1/sandboxes/{sandbox_id}/extend"),
            ("DELETE", f"/v1/sandboxes/{sandbox_id}"),
            ("GET", f"/v1/sandboxes/{sandbox_id}/vnc/"),
            ("PUT", f"/v1/sandboxes/{sandbox_id}/network"),
        ]:
            body = {"allow": ["allowed.test"]} if method == "PUT" else None
            assert api.request(method, path, json=body, headers=bob.headers).status_code == 404, (method, path)
        # Alice's own sandbox has no network: its rules cannot change (the record is hers).
        refused = api.put(f"/v1/sandboxes/{sandbox_id}/network", json={"allow": []}, headers=alice.headers)
        assert refused.status_code == 409, refused.text
        assert "created without network" in refused.json()["error"]["message"]
        assert sandbox_id not in {s["sandbox_id"] for s in api.get("/v1/sandboxes", headers=bob.headers).json()["sandboxes"]}
        assert sandbox_id in {s["sandbox_id"] for s in api.get("/v1/sandboxes", headers=admin.headers).json()["sandboxes"]}
        # The owner's key opens the desktop routes as the sandbox token does (this one has no
        # desktop: 409 says the key was accepted).
        assert api.get(f"/v1/sandboxes/{sandbox_id}/vnc/", headers=alice.headers).status_code == 409

        ran = api.post("/v1/tasks", json=step, headers=alice.headers)
        assert ran.status_code == 201, ran.text

        # Alice's quota is one sandbox at a time.
        second = api.post("/v1/sandboxes", json={"ttl": 300}, headers=alice.headers)
        assert second.status_code == 429, second.text
        assert "max_sandboxes" in second.json()["error"]["message"]
        assert int(second.headers["Retry-After"]) >= 1
    finally:
        api.delete(f"/v1/sandboxes/{sandbox_id}", headers=alice.headers)


def test_keys_are_made_listed_and_revoked_by_an_admin_only(
    keyed: Cluster, api: httpx.Client, admin: Key, alice: Key
) -> None:
    refused = api.post("/v1/keys", json={"name": "mallory", "admin": True}, headers=alice.headers)
    assert refused.status_code == 403
    assert api.get("/v1/keys", headers=alice.headers).status_code == 403

    carol = create_key(api, admin, "carol")
    assert api.get("/v1/tasks", headers=carol.headers).status_code == 200
    listed = api.get("/v1/keys", headers=admin.headers).json()["keys"]
    assert carol.key_id in {k["key_id"] for k in listed}
    assert not any("key" in k for k in listed)  # never the keys themselves

    revoked = corral_cli(keyed, "keys", "revoke", carol.key_id, key=admin.secret)
    assert revoked.returncode == 0, revoked.stderr
    after = api.get("/v1/tasks", headers=carol.headers)
    assert after.status_code == 401
    assert after.json()["error"]["message"] == "the API key is unknown or revoked"

    ls = corral_cli(keyed, "keys", "ls", "--all", "--json", key=admin.secret)
    assert ls.returncode == 0, ls.stderr
    carol_row = next(k for k in json.loads(ls.stdout) if k["key_id"] == carol.key_id)
    assert carol_row["revoked_at"]


def test_the_audit_log_names_keys_by_id_and_holds_no_key(
    keyed: Cluster, api: httpx.Client, admin: Key, alice: Key, bob: Key, alice_task: str
) -> None:
    api.get(f"/v1/tasks/{alice_task}", headers=bob.headers)  # a refusal to record
    sleeper = api.post("/v1/tasks", json={"steps": [{"tool": "shell", "command": "sleep 60"}]}, headers=alice.headers)
    assert api.post(f"/v1/tasks/{sleeper.json()['task_id']}/cancel", headers=alice.headers).status_code == 200
    audit = keyed.data_dir / "audit.log"
    assert stat.S_IMODE(audit.stat().st_mode) == 0o600
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert {"event": "task_submitted", "key_id": alice.key_id, "tenant_id": "alice", "task_id": alice_task}.items() <= next(
        line for line in lines if line["event"] == "task_submitted" and line.get("task_id") == alice_task
    ).items()
    assert any(line["event"] == "key_created" and line["key_id"] == admin.key_id for line in lines)
    assert any(
        line["event"] == "access_refused" and line.get("key_id") == bob.key_id and line.get("task_id") == alice_task
        for line in lines
    )
    assert any(line["event"] == "access_refused" and line["reason"] == "no API key" for line in lines)
    assert any(line["event"] == "access_refused" and line.get("method") == "DeleteSandbox"
               and line.get("key_id") == bob.key_id for line in lines)
    assert {"sandbox_created", "sandbox_deleted", "task_cancelled", "key_revoked"} <= {line["event"] for line in lines}
    for log in [audit, *keyed.data_dir.glob("*.log")]:
        text = log.read_text(errors="replace")
        for key in (admin, alice, bob):
            assert key.secret not in text, f"{key.tenant_id}'s key is in {log.name}"


def test_metrics_answer_an_admin_key_only(api: httpx.Client, alice: Key, admin: Key) -> None:
    refused = api.get("/metrics", headers=alice.headers)
    assert refused.status_code == 403, refused.text
    assert "admin API key" in refused.json()["error"]["message"]
    scraped = api.get("/metrics", headers=admin.headers)
    assert scraped.status_code == 200, scraped.text
    assert scraped.headers["content-type"].startswith("text/plain")
    # The executor's series are there (and no tenant's key or id is a label anywhere).
    assert "corral_sandbox_network_refused_connections_total{" in scraped.text
    assert alice.tenant_id not in scraped.text and admin.secret not in scraped.text


def test_a_sandbox_calls_are_its_tenants_alone(api: httpx.Client, alice: Key, bob: Key, admin: Key) -> None:
    created = api.post("/v1/sandboxes", json={"ttl": 300}, headers=alice.headers)
    assert created.status_code == 201, created.text
    sandbox = f"/v1/sandboxes/{created.json()['sandbox_id']}"
    raw = {"content-type": "application/octet-stream"}
    try:
        ran = api.post(f"{sandbox}/commands", json={"command": "echo mine > mine.txt; echo ok"}, headers=alice.headers)
        assert ran.status_code == 200 and ran.json()["stdout"] == "ok\n", ran.text
        unknown = api.post(f"/v1/sandboxes/{UNKNOWN_ID}/commands", json={"command": "true"}, headers=bob.headers)
        assert unknown.status_code == 404
        # Bob's calls on alice's sandbox answer exactly as on an unknown one; none runs.
        for method, path, kwargs in [
            ("POST", f"{sandbox}/commands", {"json": {"command": "echo bob > bob.txt"}}),
            ("POST", f"{sandbox}/commands", {"json": {"command": "sleep 100", "background": True}}),
            ("GET", f"{sandbox}/files", {"params": {"path": "mine.txt"}}),
            ("PUT", f"{sandbox}/files", {"params": {"path": "bob.txt"}, "content": b"bob", "headers": raw}),
            ("GET", f"{sandbox}/files/list", {}),
            ("DELETE", f"{sandbox}/files", {"params": {"path": "mine.txt"}}),
            ("GET", f"{sandbox}/desktop/screenshot", {}),
            ("GET", f"{sandbox}/history", {}),
        ]:
            headers = {**kwargs.pop("headers", {}), **bob.headers}  # type: ignore[dict-item]
            reply = api.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
            assert reply.status_code == 404, (method, path, reply.text)
            assert reply.json()["error"]["message"] == unknown.json()["error"]["message"].replace(
                UNKNOWN_ID, created.json()["sandbox_id"]
            ), (method, path, reply.text)
        listing = api.get(f"{sandbox}/files/list", headers=alice.headers).json()
        assert [e["name"] for e in listing["entries"]] == ["mine.txt"], listing
        # Without a key, a call is refused before anything else.
        assert api.post(f"{sandbox}/commands", json={"command": "true"}).status_code == 401
        assert api.get(f"{sandbox}/files", params={"path": "mine.txt"}, headers=admin.headers).content == b"mine\n"
    finally:
        api.delete(sandbox, headers=alice.headers)


@pytest.mark.timeout(240)
def test_mcp_over_http_and_computer_use_act_as_the_callers_key(
    keyed: Cluster, api: httpx.Client, admin: Key, bob: Key
) -> None:
    """`corral mcp --http` passes each client's Bearer key to the gateway: a wrong key is
    refused there, and one tenant's key cannot reach another's sandbox (neither through MCP
    nor through the computer-use routes)."""
    import anyio
    from mcp_harness import call_over_http, error_of, mcp_http_server, text_of

    dave = create_key(api, admin, "dave")
    with mcp_http_server(keyed) as url:
        (created,) = anyio.run(call_over_http, url, dave.secret, [("create_sandbox", {"ttl": 300})])
        sandbox_id = json.loads(text_of(created))["sandbox_id"]
        try:
            ran, listed = anyio.run(call_over_http, url, dave.secret, [
                ("run_shell", {"sandbox_id": sandbox_id, "command": "echo mine"}), ("list_sandboxes", {}),
            ])
            assert "--- stdout ---\nmine\n" in text_of(ran)
            assert [s["sandbox_id"] for s in json.loads(text_of(listed))] == [sandbox_id]
            (stranger,) = anyio.run(call_over_http, url, bob.secret, [
                ("run_shell", {"sandbox_id": sandbox_id, "command": "echo theirs"}),
            ])
            assert "NOT_FOUND: no sandbox with id" in error_of(stranger)
            (forged,) = anyio.run(call_over_http, url, "crl_not_a_key", [("list_sandboxes", {})])
            assert "UNAUTHENTICATED" in error_of(forged)
            bash = f"/v1/sandboxes/{sandbox_id}/computer-use/bash"
            assert api.post(bash, json={"command": "id -u"}, headers=bob.headers).status_code == 404
            mine = api.post(bash, json={"command": "echo $((6 * 7))"}, headers=dave.headers).json()
            assert mine["content"] == [{"type": "text", "text": "42"}] and mine["is_error"] is False
        finally:
            api.delete(f"/v1/sandboxes/{sandbox_id}", headers=dave.headers)
