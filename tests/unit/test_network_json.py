"""`"network"` in the JSON API: true | false | {"allow", "deny"} in, the same shape out, bad
rules named; the scheduler's check of the protos; the executor's refusal events and totals."""

from __future__ import annotations

import argparse
import re

import pytest
from pydantic import ValidationError

from corral.cli_run import build_task
from corral.config import Settings
from corral.errors import InvalidTask
from corral.network_json import NetworkStatusView
from corral.network_rules import NetworkRules
from corral.schema import TaskRequest, task_to_json
from corral.steps import check_spec
from corral.v1 import memory_pb2, sandbox_pb2, task_pb2
from corral.views import SandboxView, event_view
from gateway.routers.sandboxes import NetworkRulesRequest, SandboxRequest
from services.executor.network.status import NetworkStatus, NetworkTally
from services.executor.recorder import MAX_NETWORK_EVENTS, TaskRecorder

STEPS = [{"tool": "shell", "command": "true"}]


def task(network: object) -> TaskRequest:
    return TaskRequest.model_validate({"steps": STEPS, "network": network})


def test_the_three_forms_map_to_the_protos_and_back() -> None:
    for value, network, allow, deny in (
        (False, False, [], []),
        (True, True, [], []),
        ({"allow": ["pypi.org", "*.npmjs.org", "203.0.113.0/24"]}, True, ["pypi.org", "*.npmjs.org", "203.0.113.0/24"], []),
        ({"deny": ["denied.test"]}, True, [], ["denied.test"]),
    ):
        spec = task(value).to_proto()
        assert (spec.network, list(spec.network_rules.allow), list(spec.network_rules.deny)) == (network, allow, deny)
        shown = task_to_json(task_pb2.Task(task_id="t", state=task_pb2.TASK_STATE_SCHEDULED, spec=spec))["network"]
        expected = {"allow": allow, "deny": deny} if isinstance(value, dict) else value
        assert shown == expected
        # What is read back can be sent again as it is.
        assert task(shown).to_proto() == spec


def test_rules_read_back_as_written() -> None:
    # Checked, not rewritten: the order and text the client sent (trimmed) come back.
    spec = task({"allow": [" 203.0.113.7", "PyPI.org", "*.npmjs.org"], "deny": ["10.0.0.0/8"]}).to_proto()
    assert list(spec.network_rules.allow) == ["203.0.113.7", "PyPI.org", "*.npmjs.org"]
    shown = task_to_json(task_pb2.Task(task_id="t", state=task_pb2.TASK_STATE_SCHEDULED, spec=spec))["network"]
    assert shown == {"allow": ["203.0.113.7", "PyPI.org", "*.npmjs.org"], "deny": ["10.0.0.0/8"]}


def test_a_sandbox_takes_the_same_forms() -> None:
    spec = SandboxRequest.model_validate({"network": {"allow": ["allowed.test"]}}).to_proto()
    assert spec.network and list(spec.network_rules.allow) == ["allowed.test"]
    sandbox = sandbox_pb2.Sandbox(sandbox_id="s", state=sandbox_pb2.SANDBOX_STATE_ACTIVE, spec=spec)
    assert SandboxView.from_proto(sandbox).to_json()["network"] == {"allow": ["allowed.test"], "deny": []}
    assert SandboxView.from_proto(sandbox).to_json()["network_status"] is None
    assert SandboxRequest.model_validate({"network": True}).to_proto().network


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"allow": ["http://pypi.org"]}, "allow[0]: 'http://pypi.org'"),
        ({"allow": ["pypi.org", "127.0.0.1"]}, "allow[1]: '127.0.0.1' is never reachable"),
        ({"deny": ["10.0.0.1/8"]}, "deny[0]: '10.0.0.1/8' has host bits set"),
        ({"allow": ["*"]}, "allow[0]: '*'"),
        ({"allow": "pypi.org"}, "allow: a list of rules"),
        ({"allowed": []}, "unknown key(s) ['allowed']"),
        ("yes", "true, false or"),
    ],
)
def test_a_bad_value_is_refused_naming_the_rule(value: object, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        task(value)
    (problem,) = caught.value.errors()
    assert problem["loc"] == ("network",)
    assert words in problem["msg"], problem["msg"]
    with pytest.raises(ValidationError, match=re.escape(words)):
        SandboxRequest.model_validate({"network": value})


def test_the_put_body_is_checked_like_the_create() -> None:
    assert NetworkRulesRequest.model_validate({"allow": ["allowed.test"]}).to_proto().allow == ["allowed.test"]
    assert NetworkRulesRequest.model_validate({}).to_proto() == task_pb2.NetworkRules()
    with pytest.raises(ValidationError, match=r"deny\[0\]: '169.254.169.254/33'"):
        NetworkRulesRequest.model_validate({"deny": ["169.254.169.254/33"]})
    with pytest.raises(ValidationError, match="network"):  # the other spelling is refused, not ignored
        NetworkRulesRequest.model_validate({"network": {"allow": []}})


def test_the_openapi_schema_describes_the_object_form() -> None:
    schema = TaskRequest.model_json_schema()
    network = schema["properties"]["network"]
    assert {"type": "boolean"} in network["anyOf"]
    assert {"$ref": "#/$defs/NetworkRulesModel"} in network["anyOf"]
    assert set(schema["$defs"]["NetworkRulesModel"]["properties"]) == {"allow", "deny"}


def test_the_scheduler_checks_rules_sent_as_protos() -> None:
    settings = Settings()
    steps = [task_pb2.Step(shell=task_pb2.ShellAction(command="true"))]
    good = task_pb2.TaskSpec(steps=steps, network=True, network_rules=task_pb2.NetworkRules(allow=["allowed.test"]))
    check_spec(good, settings)
    bad = task_pb2.TaskSpec(steps=steps, network=True, network_rules=task_pb2.NetworkRules(deny=["a..b"]))
    with pytest.raises(InvalidTask, match=r"network.deny\[0\]: 'a..b'"):
        check_spec(bad, settings)
    off = task_pb2.TaskSpec(steps=steps, network=False, network_rules=task_pb2.NetworkRules(allow=["allowed.test"]))
    with pytest.raises(InvalidTask, match="network is off"):
        check_spec(off, settings)
    in_sandbox = task_pb2.TaskSpec(
        steps=steps, network=True, sandbox_id="s", network_rules=task_pb2.NetworkRules(allow=["allowed.test"])
    )
    with pytest.raises(InvalidTask, match="PUT /v1/sandboxes"):
        check_spec(in_sandbox, settings)


def test_the_cli_flags_make_the_object_form() -> None:
    args = argparse.Namespace(
        file=None, commands=["curl http://allowed.test"], extra_steps=[], timeout=None, network=False,
        allow=["allowed.test"], deny=["denied.test"], sandbox=None, env=[],
    )
    spec = TaskRequest.model_validate(build_task(args)).to_proto()  # the document the CLI sends
    assert spec.network and list(spec.network_rules.allow) == ["allowed.test"]
    assert list(spec.network_rules.deny) == ["denied.test"]


def test_refused_lookups_become_events_and_history_up_to_a_bound() -> None:
    events: list[task_pb2.TaskEvent] = []
    history: list[memory_pb2.HistoryEvent] = []
    recorder = TaskRecorder("t1", events.append, lambda event, _batch: history.append(event))
    for n in range(MAX_NETWORK_EVENTS + 20):
        recorder.network_refused(f"lookup of denied{n}.test refused")
    assert len(events) == MAX_NETWORK_EVENTS + 1
    first = event_view(events[0]).to_json()
    assert first["type"] == "network_refused" and first["description"] == "lookup of denied0.test refused"
    assert "only counted" in events[-1].network_refused.description
    assert [h.kind for h in history] == [memory_pb2.HISTORY_KIND_NETWORK_REFUSED] * (MAX_NETWORK_EVENTS + 1)
    assert history[0].action == "lookup of denied0.test refused"


class Counting:
    """A sandbox's network counters, as a driver reports them."""

    def __init__(self) -> None:
        self.connections = self.lookups = 0

    async def network_status(self) -> NetworkStatus:
        return NetworkStatus(True, NetworkRules(), self.connections, self.lookups, [])


async def test_the_executor_totals_only_grow_as_sandboxes_come_and_go() -> None:
    tally = NetworkTally()
    first, second = Counting(), Counting()
    tally.track(first)
    tally.track(second)
    first.connections, first.lookups, second.lookups = 3, 2, 5
    assert await tally.totals() == (3, 7)
    await tally.retire(first)
    await tally.retire(first)  # twice: counted once
    assert await tally.totals() == (3, 7)
    second.connections = 1
    assert await tally.totals() == (4, 7)


def test_the_network_status_view() -> None:
    status = NetworkStatus(True, NetworkRules.parse(["allowed.test"]), 2, 1, ["denied.test"]).to_proto()
    view = NetworkStatusView.from_proto(status).model_dump()
    assert view == {
        "rules": {"allow": ["allowed.test"], "deny": []},
        "refused_connections": 2,
        "refused_lookups": 1,
        "recent_refused_names": ["denied.test"],
    }
