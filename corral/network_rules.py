"""Egress rules of a sandbox with network: what they mean, checked once for every caller.

A sandbox with network reaches the public internet and nothing of ours (README, "Network"):
- never, whatever the rules say: loopback, link-local (169.254.0.0/16 and fe80::/10, which hold
  the cloud metadata addresses), multicast, "this network", and every address of the
  executor's host (the drivers add those);
- by default refused, unless an allow rule lying inside the range opens it: the private ranges
  (RFC 1918, CGNAT 100.64.0.0/10, IPv6 ULA fc00::/7), where a company's own services live;
- `allow` rules (domains such as "pypi.org" or "*.npmjs.org", addresses or CIDRs) narrow the
  sandbox to those destinations only; a name resolves only when allowed, and a domain rule lets
  through the addresses Corral's resolver answered for it;
- `deny` rules (same syntax) win over every allow rule.

The drivers compile this into nftables rules (services/executor/network/) and the sandbox's
resolver asks `name_allowed`; the scheduler and the REST models call `NetworkRules.parse` so a
bad rule is refused at submission with its text in the message.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from corral import errors
from corral.v1 import task_pb2

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_RULES = 256
MAX_NAME_LENGTH = 253

# Never reachable from a sandbox; no rule opens them.
NEVER_REACHABLE: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local: 169.254.169.254 is the cloud metadata service
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255
        "::/128",
        "::1/128",
        "::ffff:0:0/96",  # IPv4-mapped: would reach the IPv4 ranges above by another name
        "fe80::/10",  # link-local
        "ff00::/8",  # multicast
        "fd00:ec2::254/128",  # AWS's IPv6 metadata address (inside ULA, listed for clarity)
    )
)
# Refused unless an allow rule inside one of them opens (part of) it.
PRIVATE_RANGES: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class DomainRule:
    """`pypi.org` matches that name only; `*.npmjs.org` matches every name below npmjs.org
    (registry.npmjs.org, a.b.npmjs.org), not npmjs.org itself."""

    domain: str
    wildcard: bool = False

    def matches(self, name: str) -> bool:
        name = normalize_name(name)
        if self.wildcard:
            return name.endswith("." + self.domain)
        return name == self.domain

    def __str__(self) -> str:
        return f"*.{self.domain}" if self.wildcard else self.domain


def normalize_name(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _parse_domain(text: str) -> DomainRule:
    wildcard = text.startswith("*.")
    name = normalize_name(text[2:] if wildcard else text)
    if not name or len(name) > MAX_NAME_LENGTH:
        raise ValueError("is not a domain name")
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise ValueError(
            "is neither an address, a CIDR nor a domain name (letters, digits, '-' and '_' "
            "between dots; '*.' only as a prefix)"
        )
    if wildcard and len(labels) < 2:
        raise ValueError("is too broad a wildcard (name at least a registered domain, as '*.example.com')")
    return DomainRule(name, wildcard)


def _parse_network(text: str) -> IPNetwork | None:
    """The rule as an address or CIDR, None when it is not one (a domain)."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            raise ValueError(f"has host bits set (did you mean {ipaddress.ip_network(text, strict=False)}?)") from None
        if re.fullmatch(r"[\d.]+(/\d+)?", text) or (":" in text or "/" in text):
            raise ValueError("is not a valid address or CIDR") from None
        return None


def never_reachable(network: IPNetwork) -> bool:
    return any(network.overlaps(n) for n in NEVER_REACHABLE if n.version == network.version)


def is_private(network: IPNetwork) -> bool:
    """Whether `network` lies inside one of the private ranges."""
    return any(
        n.version == network.version and network.subnet_of(n)  # type: ignore[arg-type]
        for n in PRIVATE_RANGES
    )


@dataclass(frozen=True)
class NetworkRules:
    allow_domains: tuple[DomainRule, ...] = ()
    allow_networks: tuple[IPNetwork, ...] = ()
    deny_domains: tuple[DomainRule, ...] = ()
    deny_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> NetworkRules:
        """Raises InvalidArgument naming the first bad rule."""
        parsed: dict[str, tuple[list[DomainRule], list[IPNetwork]]] = {}
        for field, rules in (("allow", list(allow)), ("deny", list(deny))):
            if len(rules) > MAX_RULES:
                raise errors.InvalidArgument(f"network.{field}: at most {MAX_RULES} rules (got {len(rules)})")
            domains: list[DomainRule] = []
            networks: list[IPNetwork] = []
            for n, rule in enumerate(rules):
                text = rule.strip() if isinstance(rule, str) else rule
                if not isinstance(text, str) or not text:
                    raise errors.InvalidArgument(f"network.{field}[{n}]: a rule is a non-empty string")
                try:
                    network = _parse_network(text)
                    if network is None:
                        domains.append(_parse_domain(text))
                        continue
                    if field == "allow" and never_reachable(network):
                        raise ValueError(
                            "is never reachable from a sandbox (loopback, link-local and metadata "
                            "addresses, multicast)"
                        )
                    networks.append(network)
                except ValueError as exc:
                    raise errors.InvalidArgument(f"network.{field}[{n}]: {text!r} {exc}") from None
            parsed[field] = (domains, networks)
        return cls(
            allow_domains=tuple(parsed["allow"][0]),
            allow_networks=tuple(parsed["allow"][1]),
            deny_domains=tuple(parsed["deny"][0]),
            deny_networks=tuple(parsed["deny"][1]),
        )

    @classmethod
    def from_proto(cls, rules: task_pb2.NetworkRules) -> NetworkRules:
        return cls.parse(rules.allow, rules.deny)

    def to_proto(self) -> task_pb2.NetworkRules:
        return task_pb2.NetworkRules(allow=self.allow, deny=self.deny)

    @property
    def allow(self) -> list[str]:
        return [str(r) for r in (*self.allow_domains, *self.allow_networks)]

    @property
    def deny(self) -> list[str]:
        return [str(r) for r in (*self.deny_domains, *self.deny_networks)]

    @property
    def restricted(self) -> bool:
        """Whether only the allowed destinations are reachable (any allow rule given)."""
        return bool(self.allow_domains or self.allow_networks)

    def name_allowed(self, name: str) -> bool:
        """Whether the sandbox's resolver answers `name` (else it refuses, forwarding nothing)."""
        if any(rule.matches(name) for rule in self.deny_domains):
            return False
        if not self.restricted:
            return True
        return any(rule.matches(name) for rule in self.allow_domains)

    def address_allowed(self, address: IPAddress | str, resolved_for_allowed_name: bool = False) -> bool:
        """Whether a connection to `address` goes through (the host's own addresses aside,
        which the drivers refuse). `resolved_for_allowed_name`: the sandbox's resolver answered
        it for a name `name_allowed` accepts."""
        ip = ipaddress.ip_address(address)
        net = ipaddress.ip_network(ip)
        if never_reachable(net) or any(ip in n for n in self.deny_networks):
            return False
        opened = [n for n in self.allow_networks if ip in n]
        if is_private(net):
            # Only a CIDR rule inside a private range opens it, never a name: an allowed name
            # that resolves to 10.x (DNS rebinding) stays refused.
            return any(is_private(n) for n in opened)
        if self.restricted:
            return bool(opened) or resolved_for_allowed_name
        return True

    def private_openings(self) -> tuple[IPNetwork, ...]:
        """The allow rules that open part of a private range."""
        return tuple(n for n in self.allow_networks if is_private(n))


def rules_from_json(value: object, field: str = "network") -> tuple[bool, NetworkRules]:
    """`"network": true | false | {"allow": [...], "deny": [...]}` as (enabled, rules)."""
    if isinstance(value, bool):
        return value, NetworkRules()
    if isinstance(value, dict):
        unknown = set(value) - {"allow", "deny"}
        if unknown:
            raise errors.InvalidArgument(f"{field}: unknown key(s) {sorted(unknown)} (allow, deny)")
        allow, deny = value.get("allow", []), value.get("deny", [])
        for name, rules in (("allow", allow), ("deny", deny)):
            if not isinstance(rules, list):
                raise errors.InvalidArgument(f"{field}.{name}: a list of rules")
        return True, NetworkRules.parse(allow, deny)
    raise errors.InvalidArgument(f"{field}: true, false or {{\"allow\": [...], \"deny\": [...]}}")
