"""Sandboxes with network, on both drivers, through the real gateway, scheduler and executor,
against the test lab (tests/netlab.py): the public internet stand-ins answer, nothing of the
host does (Corral's ports, a listener of the test's, the host's addresses, the metadata
address), rules narrow it by name and CIDR, a denied name is never forwarded, a rule change
on a running sandbox holds for its next connection, and every refusal is counted and shown.

Each attack runs from inside a sandbox next to a control that must succeed from the same step
(so "unreachable" never just means "no network at all").
"""

from __future__ import annotations

import re
from typing import Any

from .conftest import Corral, host_addresses, refused


def _samples(text: str, name: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(\{{.*\}})? (\S+)", line)
        if match:
            found[match.group(1) or ""] = float(match.group(2))
    return found


def test_the_default_policy_reaches_the_lab_and_nothing_of_the_host(
    corral: Corral, host_listener: int, metadata_host: str
) -> None:
    lab = corral.lab
    targets: list[tuple[str, int]] = [
        *corral.corral_ports,
        ("127.0.0.1", host_listener),
        *[(address, host_listener) for address in host_addresses()],
        (metadata_host, 80),
        (lab.private, 80),  # a private range: refused without a rule opening it
    ]
    assert (lab.host_address, host_listener) in targets
    found = corral.probe(
        f"targets = {targets!r}\n"
        "print(json.dumps({\n"
        "    'control': get('other.test'), 'by_address': get('" + lab.allowed + "'),\n"
        "    'targets': {f'{h}:{p}': connect(h, p) for h, p in targets},\n"
        "    'rebind': lookup('rebind.test'), 'private_name': lookup('private-name.test'),\n"
        "    'metadata_name': lookup('metadata.test'),\n"
        "}))\n"
    )
    assert found["control"] == "other.test" and found["by_address"] == "allowed.test", found
    opened = {target: word for target, word in found["targets"].items() if not refused(word)}
    assert opened == {}, f"reachable from a sandbox on {corral.driver}: {opened}"
    # Names answering with addresses the sandbox may not reach resolve to nothing usable.
    for name in ("rebind", "private_name", "metadata_name"):
        assert refused(found[name]) or found[name] == [], (name, found[name])


def test_allow_rules_narrow_by_name_and_cidr(corral: Corral) -> None:
    lab = corral.lab
    asked = len(lab.queries())
    found = corral.probe(
        "print(json.dumps({'allowed': get('allowed.test'), 'www': get('www.allowed.test'),\n"
        "    'other_name': lookup('other.test'), 'other_address': connect('" + lab.other + "', 80),\n"
        "    'denied_name': lookup('denied.test'), 'denied_address': connect('" + lab.denied + "', 80)}))\n",
        network={"allow": ["allowed.test", "*.allowed.test"]},
    )
    assert found["allowed"] == "allowed.test" and found["www"] == "allowed.test", found
    for key in ("other_name", "other_address", "denied_name", "denied_address"):
        assert refused(found[key]), (key, found[key])
    # A name the rules refuse is answered by Corral's resolver and never forwarded: it cannot
    # carry anything out.
    forwarded = lab.queries()[asked:]
    assert "allowed.test" in forwarded
    assert "other.test" not in forwarded and "denied.test" not in forwarded, forwarded
    # The task's own sandbox tells its events what it refused.
    refusals = " ".join(e["description"] for e in corral.events(found["task_id"]) if e["type"] == "network_refused")
    assert "other.test" in refusals and "denied.test" in refusals, refusals
    # ... and the connections it refused, counted over the step that tried them.
    assert "connection attempts refused during step 1" in refusals, refusals


def test_deny_rules_win_and_a_private_range_opens_only_by_cidr(corral: Corral) -> None:
    lab = corral.lab
    found = corral.probe(
        "print(json.dumps({'other': get('other.test'), 'denied_name': lookup('denied.test'),\n"
        "    'denied_address': connect('" + lab.denied + "', 80), 'private': get('" + lab.private + "')}))\n",
        network={"allow": ["other.test", "denied.test", "10.213.0.0/24"], "deny": ["denied.test", lab.denied]},
    )
    assert found["other"] == "other.test", found
    assert refused(found["denied_name"]) and refused(found["denied_address"]), found
    assert found["private"] == "private.test", found
    # A name allowed by its rule but resolving into a private range stays refused (DNS
    # rebinding): only a CIDR rule opens a private service.
    by_name = corral.probe(
        "print(json.dumps({'private_name': get('private-name.test'), 'control': get('allowed.test')}))\n",
        network={"allow": ["private-name.test", "allowed.test"]},
    )
    assert by_name["control"] == "allowed.test" and refused(by_name["private_name"]), by_name


def _sandbox(corral: Corral, network: object) -> str:
    created = corral.api.post("/v1/sandboxes", json={"ttl": 300, "network": network})
    assert created.status_code == 201, created.text
    sandbox_id: str = created.json()["sandbox_id"]
    return sandbox_id


def test_a_rule_change_holds_for_the_running_sandboxs_next_connection(corral: Corral) -> None:
    sandbox_id = _sandbox(corral, {"allow": ["allowed.test"]})
    try:
        # A background process keeps running across the change: the sandbox is not remade.
        before = corral.probe(
            "import subprocess, os\n"
            "p = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
            "print(json.dumps({'allowed': get('allowed.test'), 'other': get('other.test'), 'pid': p.pid}))\n",
            sandbox_id=sandbox_id,
        )
        assert before["allowed"] == "allowed.test" and refused(before["other"]), before

        changed = corral.api.put(f"/v1/sandboxes/{sandbox_id}/network", json={"allow": ["other.test"]})
        assert changed.status_code == 200, changed.text
        assert changed.json()["network"] == {"allow": ["other.test"], "deny": []}
        assert changed.json()["network_status"]["rules"] == {"allow": ["other.test"], "deny": []}
        shown = corral.api.get(f"/v1/sandboxes/{sandbox_id}").json()
        assert shown["network"] == {"allow": ["other.test"], "deny": []}

        after = corral.probe(
            "import os\n"
            f"alive = os.path.exists('/proc/{before['pid']}')\n"
            "print(json.dumps({'allowed': get('allowed.test'), 'other': get('other.test'), 'alive': alive}))\n",
            sandbox_id=sandbox_id,
        )
        assert after["alive"], "the sandbox was remade, not changed"
        assert after["other"] == "other.test" and refused(after["allowed"]), after

        # Back to the default policy: both answer.
        reset = corral.api.put(f"/v1/sandboxes/{sandbox_id}/network", json={})
        assert reset.status_code == 200 and reset.json()["network"] is True, reset.text
        both = corral.probe(
            "print(json.dumps({'allowed': get('allowed.test'), 'other': get('other.test')}))", sandbox_id=sandbox_id
        )
        assert (both["allowed"], both["other"]) == ("allowed.test", "other.test"), both
        bad = corral.api.put(f"/v1/sandboxes/{sandbox_id}/network", json={"allow": ["169.254.169.254"]})
        assert bad.status_code == 400 and "allow[0]: '169.254.169.254'" in bad.json()["error"]["message"]
    finally:
        corral.api.delete(f"/v1/sandboxes/{sandbox_id}")


def test_refusals_are_counted_in_the_sandbox_its_task_events_history_and_metrics(corral: Corral) -> None:
    lab = corral.lab
    sandbox_id = _sandbox(corral, {"allow": ["allowed.test"]})
    executor = corral.cluster.executor_ids["executor"]
    series = f'{{driver="{corral.driver}",executor_id="{executor}"}}'

    def counted() -> tuple[dict[str, Any], dict[str, float]]:
        status: dict[str, Any] = corral.api.get(f"/v1/sandboxes/{sandbox_id}").json()["network_status"]
        scraped = corral.api.get("/metrics")
        assert scraped.status_code == 200, scraped.text
        return status, {
            "lookups": _samples(scraped.text, "corral_sandbox_network_refused_lookups_total")[series],
            "connections": _samples(scraped.text, "corral_sandbox_network_refused_connections_total")[series],
        }

    try:
        # The sandbox's own start may be counted (its kernel's multicast): the figures are
        # compared before and after the refused lookup and connection.
        corral.probe("print(json.dumps({'control': get('allowed.test')}))", sandbox_id=sandbox_id)
        before, metrics_before = counted()
        found = corral.probe(
            "print(json.dumps({'name': lookup('denied.test'), 'address': connect('" + lab.other + "', 80),\n"
            "    'control': get('allowed.test')}))\n",
            sandbox_id=sandbox_id,
        )
        assert found["control"] == "allowed.test" and refused(found["name"]) and refused(found["address"]), found
        after, metrics_after = counted()
        assert after["refused_lookups"] > before["refused_lookups"], (before, after)
        assert after["refused_connections"] > before["refused_connections"], (before, after)
        assert "denied.test" in after["recent_refused_names"], after
        assert after["rules"] == {"allow": ["allowed.test"], "deny": []}
        assert metrics_after["lookups"] > metrics_before["lookups"], (metrics_before, metrics_after)
        assert metrics_after["connections"] > metrics_before["connections"], (metrics_before, metrics_after)

        task_id = found["task_id"]
        refusals = [e for e in corral.events(task_id) if e["type"] == "network_refused"]
        assert any("denied.test" in e["description"] for e in refusals), refusals
        # In a long-lived sandbox too: only what this task's step tried, not the sandbox's start.
        assert any("refused during step 1" in e["description"] for e in refusals), refusals
        history = corral.api.get(f"/v1/tasks/{task_id}/history").json()["events"]
        assert any(h["kind"] == "network_refused" and "denied.test" in h["action"] for h in history), history
    finally:
        corral.api.delete(f"/v1/sandboxes/{sandbox_id}")
    # The sandbox's counts stay in the executor's totals after it is gone.
    scraped = corral.api.get("/metrics").text
    assert _samples(scraped, "corral_sandbox_network_refused_lookups_total")[series] >= metrics_after["lookups"]


def test_without_network_there_is_no_lab_and_no_rules(corral: Corral) -> None:
    found = corral.probe(
        "print(json.dumps({'name': lookup('allowed.test'), 'address': connect('" + corral.lab.allowed + "', 80)}))",
        network=False,
    )
    assert refused(found["name"]) and refused(found["address"]), found
    sandbox_id = _sandbox(corral, False)
    try:
        refused_put = corral.api.put(f"/v1/sandboxes/{sandbox_id}/network", json={"allow": ["allowed.test"]})
        assert refused_put.status_code == 409 and "without network" in refused_put.json()["error"]["message"]
    finally:
        corral.api.delete(f"/v1/sandboxes/{sandbox_id}")
