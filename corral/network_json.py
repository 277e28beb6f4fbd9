"""`"network"` in the JSON documents: `true | false | {"allow": [...], "deny": [...]}`.

The same shape goes in (POST /v1/tasks, POST /v1/sandboxes) and comes back out (GET), so a
client can send back what it read. The object form is validated by corral.network_rules,
whose message names the bad rule; on the protos it is `network = true` + `network_rules`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from corral.errors import InvalidArgument
from corral.network_rules import NetworkRules, rules_from_json
from corral.v1 import sandbox_pb2, task_pb2

RULE_SYNTAX = (
    "Domains ('pypi.org'; '*.npmjs.org' for every name below it), addresses or CIDRs "
    "('203.0.113.0/24'). Loopback, link-local (metadata) and the executor's host are never reachable."
)


class NetworkRulesModel(BaseModel):
    """Egress rules: with any `allow` rule only those destinations are reachable; `deny` wins."""

    model_config = ConfigDict(extra="forbid")

    allow: list[str] = Field(default_factory=list, description="Reachable destinations only. " + RULE_SYNTAX)
    deny: list[str] = Field(default_factory=list, description="Refused even where allowed. " + RULE_SYNTAX)

    def parse(self) -> NetworkRules:
        """Raises InvalidArgument naming the bad rule."""
        return NetworkRules.parse(self.allow, self.deny)

    def to_proto(self) -> task_pb2.NetworkRules:
        return checked_rules(self.allow, self.deny)


def checked_rules(allow: Iterable[str] = (), deny: Iterable[str] = ()) -> task_pb2.NetworkRules:
    """The rules as sent (trimmed, in their order: read back as written), once they parse;
    raises InvalidArgument naming a bad one. (The drivers get the parsed NetworkRules.)"""
    allow, deny = list(allow), list(deny)
    NetworkRules.parse(allow, deny)
    return task_pb2.NetworkRules(allow=[r.strip() for r in allow], deny=[r.strip() for r in deny])


def _validate(value: Any) -> bool | NetworkRulesModel:
    if isinstance(value, NetworkRulesModel):
        value = value.model_dump()
    try:
        enabled, _ = rules_from_json(value)
    except InvalidArgument as exc:
        raise ValueError(str(exc).removeprefix("network.").removeprefix("network: ")) from None
    if isinstance(value, dict):
        rules = checked_rules(value.get("allow", []), value.get("deny", []))
        return NetworkRulesModel(allow=list(rules.allow), deny=list(rules.deny))
    return enabled


# A field holding `"network"`: validated (the rules parsed, a bad one named) and shown in the
# OpenAPI schema as boolean or NetworkRulesModel.
NetworkField = Annotated[
    bool | NetworkRulesModel,
    BeforeValidator(_validate),
]

NETWORK_DESCRIPTION = (
    "false: no network (only lo). true: the public internet (private ranges refused; loopback, "
    "link-local/metadata and the executor's host never reachable). {\"allow\": [...], \"deny\": [...]}: "
    "network narrowed by these rules (README, \"Network\")."
)


def network_to_proto(value: bool | NetworkRulesModel) -> tuple[bool, task_pb2.NetworkRules]:
    """The JSON value as the protos' (network, network_rules)."""
    if isinstance(value, bool):
        return value, task_pb2.NetworkRules()
    return True, value.to_proto()


def network_of(enabled: bool, rules: task_pb2.NetworkRules) -> bool | NetworkRulesModel:
    """The protos' (network, network_rules) as the JSON value: rules only when there are some."""
    if enabled and (rules.allow or rules.deny):
        return NetworkRulesModel(allow=list(rules.allow), deny=list(rules.deny))
    return enabled


class NetworkStatusView(BaseModel):
    """A running sandbox's network, as its executor reports it."""

    model_config = ConfigDict(extra="forbid")

    rules: NetworkRulesModel = Field(description="The rules in force.")
    refused_connections: int = Field(description="Connections its firewall refused so far.")
    refused_lookups: int = Field(description="Lookups its resolver refused so far.")
    recent_refused_names: list[str] = Field(description="The last names refused, oldest first.")

    @classmethod
    def from_proto(cls, status: sandbox_pb2.SandboxNetworkStatus) -> NetworkStatusView:
        return cls(
            rules=NetworkRulesModel(allow=list(status.rules.allow), deny=list(status.rules.deny)),
            refused_connections=status.refused_connections,
            refused_lookups=status.refused_lookups,
            recent_refused_names=list(status.recent_refused_names),
        )
