"""NetworkRules (corral/network_rules.py) compiled into nftables, and `nft` run where it applies.

One sandbox's rules are a set of nftables sets and one chain (`egress_chain`) that gives every
new connection its verdict: refused (counted, TCP reset / ICMP admin-prohibited, so a client
fails at once instead of timing out) or let through. Both drivers use the same chain:
- bubblewrap: in the sandbox's own network namespace, hooked on `output` (`sandbox_table`);
- docker: in the host's namespace, jumped to from a `forward` hook for the container's address
  (services/executor/network/docker_net.py).
The sandbox never holds CAP_NET_ADMIN where these tables live, so it cannot change them.

Updates (`update_script`) replace the sets' contents and the chain in one `nft -f` transaction:
new connections follow the new rules at once; established ones keep their conntrack entry.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from corral.network_rules import NEVER_REACHABLE, PRIVATE_RANGES, IPAddress, IPNetwork, NetworkRules

TABLE = "corral_egress"
# How long an address the resolver answered stays open after its TTL runs out, and the most
# and least it stays at all (an answer with TTL 0 still serves the connection that asked).
RESOLVED_MIN_SECONDS = 30
RESOLVED_MAX_SECONDS = 3600


class NftError(RuntimeError):
    """`nft` refused a ruleset or could not be run."""


@dataclass(frozen=True)
class SetNames:
    """The names of one sandbox's sets, chains and counter; `prefix` keeps several sandboxes
    apart in one table (docker: one host table for every container)."""

    prefix: str = ""

    def _name(self, kind: str) -> str:
        return f"{self.prefix}{kind}"

    denied_v4 = property(lambda self: self._name("denied_v4"))
    denied_v6 = property(lambda self: self._name("denied_v6"))
    allowed_v4 = property(lambda self: self._name("allowed_v4"))
    allowed_v6 = property(lambda self: self._name("allowed_v6"))
    private_v4 = property(lambda self: self._name("private_v4"))
    private_v6 = property(lambda self: self._name("private_v6"))
    resolved_v4 = property(lambda self: self._name("resolved_v4"))
    resolved_v6 = property(lambda self: self._name("resolved_v6"))
    # The chain of each new connection's verdict, the chain of refusals and their counter.
    chain = property(lambda self: self._name("egress"))
    refuse = property(lambda self: self._name("refuse"))
    refused = property(lambda self: self._name("refused"))


def _elements(networks: Iterable[IPNetwork | IPAddress], version: int) -> str:
    # Merged: nft refuses an interval set whose elements overlap (a host address inside a
    # never-reachable range, fe80::1 inside fe80::/10, an allow CIDR given twice).
    of_version = [n for n in map(ipaddress.ip_network, networks) if n.version == version]
    merged = ipaddress.collapse_addresses(of_version)  # type: ignore[type-var]
    return ", ".join(str(n) for n in merged)


def _set(name: str, family: str, elements: str, flags: str = "interval") -> str:
    body = f"type {family}; flags {flags};"
    if elements:
        body += f" elements = {{ {elements} }};"
    return f"set {name} {{ {body} }}"


def denied_networks(
    rules: NetworkRules, host_addresses: Sequence[IPAddress | IPNetwork]
) -> list[IPNetwork | IPAddress]:
    """Refused whatever else a rule says: the never-reachable ranges, the host's addresses and
    the deny rules."""
    return [*NEVER_REACHABLE, *host_addresses, *rules.deny_networks]


def set_definitions(
    names: SetNames, rules: NetworkRules, host_addresses: Sequence[IPAddress | IPNetwork]
) -> list[str]:
    denied = denied_networks(rules, host_addresses)
    return [
        _set(names.denied_v4, "ipv4_addr", _elements(denied, 4)),
        _set(names.denied_v6, "ipv6_addr", _elements(denied, 6)),
        _set(names.allowed_v4, "ipv4_addr", _elements(rules.allow_networks, 4)),
        _set(names.allowed_v6, "ipv6_addr", _elements(rules.allow_networks, 6)),
        _set(names.private_v4, "ipv4_addr", _elements(PRIVATE_RANGES, 4)),
        _set(names.private_v6, "ipv6_addr", _elements(PRIVATE_RANGES, 6)),
        # Addresses the sandbox's resolver answered for allowed names (restricted rules only).
        _set(names.resolved_v4, "ipv4_addr", "", flags="timeout"),
        _set(names.resolved_v6, "ipv6_addr", "", flags="timeout"),
        f"counter {names.refused} {{ }}",
    ]


def refuse_rules(names: SetNames) -> list[str]:
    """The body of the chain every refusal goes to: counted, then rejected at once."""
    return [
        f"counter name {names.refused}",
        "meta l4proto tcp reject with tcp reset",
        "reject with icmpx type admin-prohibited",
    ]


def egress_chain(names: SetNames, rules: NetworkRules) -> list[str]:
    """The verdict of each new connection, in order: first match wins."""
    out = [
        # DNS goes to Corral's resolver only (it is let through before this chain is reached);
        # any other resolver, or DNS over TLS, would be a channel around the name rules.
        f"meta l4proto {{ tcp, udp }} th dport {{ 53, 853 }} jump {names.refuse}",
        f"ip daddr @{names.denied_v4} jump {names.refuse}",
        f"ip6 daddr @{names.denied_v6} jump {names.refuse}",
        f"ip daddr @{names.allowed_v4} accept",
        f"ip6 daddr @{names.allowed_v6} accept",
        f"ip daddr @{names.private_v4} jump {names.refuse}",
        f"ip6 daddr @{names.private_v6} jump {names.refuse}",
    ]
    if rules.restricted:
        out += [
            f"ip daddr @{names.resolved_v4} accept",
            f"ip6 daddr @{names.resolved_v6} accept",
            f"jump {names.refuse}",
        ]
    else:
        out.append("accept")
    return out


def _chain(name: str, rules: Sequence[str], hook: str = "") -> str:
    body = "".join(f"    {r}\n" for r in ([hook] if hook else []) + list(rules))
    return f"  chain {name} {{\n{body}  }}"


def sandbox_table(rules: NetworkRules, host_addresses: Sequence[IPAddress], resolver_port: int = 53) -> str:
    """The whole ruleset of a bubblewrap sandbox's namespace (`nft -f`), replacing any before.

    The sandbox's own loopback (where its resolver listens, at 127.0.0.53) is its own: let
    through; so are packets of connections already accepted."""
    names = SetNames()
    sets = "".join(f"  {s}\n" for s in set_definitions(names, rules, host_addresses))
    output = _chain(
        "output",
        [
            'oifname "lo" accept',
            "ct state established,related accept",
            # IPv6 neighbour discovery with pasta's end of the link (link-local and multicast,
            # refused below for everything else): without it there is no IPv6 at all.
            "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept",
            # The kernel's own multicast membership reports (MLD, IGMP) when the link comes up:
            # dropped unheard and uncounted, they are no connection attempt of the sandbox's.
            "icmpv6 type { mld-listener-report, mld2-listener-report } drop",
            "ip protocol igmp drop",
            f"jump {names.chain}",
        ],
        hook="type filter hook output priority 0; policy accept;",
    )
    return (
        f"table inet {TABLE}\ndelete table inet {TABLE}\n"
        f"table inet {TABLE} {{\n{sets}"
        f"{_chain(names.refuse, refuse_rules(names))}\n"
        f"{_chain(names.chain, egress_chain(names, rules))}\n"
        f"{output}\n}}\n"
    )


def update_script(
    table: str,
    names: SetNames,
    rules: NetworkRules,
    host_addresses: Sequence[IPAddress | IPNetwork],
    family: str = "inet",
) -> str:
    """Replaces one sandbox's sets and chain in place (one transaction); the refusal counter
    keeps counting. Resolved addresses are dropped: the names they answered may be refused now."""
    denied = denied_networks(rules, host_addresses)
    lines = []
    for set_name, elements in (
        (names.denied_v4, _elements(denied, 4)),
        (names.denied_v6, _elements(denied, 6)),
        (names.allowed_v4, _elements(rules.allow_networks, 4)),
        (names.allowed_v6, _elements(rules.allow_networks, 6)),
        (names.resolved_v4, ""),
        (names.resolved_v6, ""),
    ):
        lines.append(f"flush set {family} {table} {set_name}")
        if elements:
            lines.append(f"add element {family} {table} {set_name} {{ {elements} }}")
    lines.append(f"flush chain {family} {table} {names.chain}")
    lines += [f"add rule {family} {table} {names.chain} {r}" for r in egress_chain(names, rules)]
    return "\n".join(lines) + "\n"


def resolved_script(
    table: str, names: SetNames, addresses: Iterable[IPAddress], ttl: int, family: str = "inet"
) -> str:
    """Opens `addresses` (answered for an allowed name) for about their DNS TTL."""
    seconds = max(RESOLVED_MIN_SECONDS, min(RESOLVED_MAX_SECONDS, ttl + RESOLVED_MIN_SECONDS))
    lines = []
    for address in addresses:
        set_name = names.resolved_v4 if address.version == 4 else names.resolved_v6
        # `add` keeps an element's old timeout: add (so it exists), delete, add afresh.
        lines.append(f"add element {family} {table} {set_name} {{ {address} timeout {seconds}s }}")
        lines.append(f"delete element {family} {table} {set_name} {{ {address} }}")
        lines.append(f"add element {family} {table} {set_name} {{ {address} timeout {seconds}s }}")
    return "\n".join(lines) + "\n"


def pasta_guard_table(uid: int) -> str:
    """The host's table that refuses every connection pasta (run as `uid`) makes to an address
    of the host itself, whichever addresses the host has now or gains later: a sandbox's own
    rules hold the host's addresses of when it started, and pasta is the only way its packets
    reach the host's stack. Replaced whole (one transaction); shared by every executor whose
    pasta runs as that uid on this host, so it stays when one stops."""
    table = f"corral_pasta_{uid}"
    return (
        f"table inet {table} {{}}\n"
        f"delete table inet {table}\n"
        f"table inet {table} {{\n"
        "  counter refused {}\n"
        "  chain output {\n"
        "    type filter hook output priority filter; policy accept;\n"
        f"    meta skuid {uid} fib daddr type local counter name refused reject\n"
        "  }\n"
        "}\n"
    )


async def run_nft(script: str, netns: str | None = None, nft: str = "nft") -> str:
    """Runs `nft -f -` (in the named network namespace `netns`, via /run/netns/NAME)."""
    argv = [nft, "-f", "-"]
    if netns is not None:
        argv = ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise NftError(f"cannot run {argv[0]}: {exc}") from exc
    out, err = await proc.communicate(script.encode())
    if proc.returncode != 0:
        raise NftError(f"nft refused the sandbox's network rules: {err.decode(errors='replace').strip()}")
    return out.decode()


async def read_counter(table: str, counter: str, netns: str | None = None, family: str = "inet") -> int:
    """Packets counted by a named counter (refused connection attempts)."""
    import json

    argv = ["nft", "-j", "list", "counter", family, table, counter]
    if netns is not None:
        argv = ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        return 0
    for item in json.loads(out or b"{}").get("nftables", []):
        if "counter" in item:
            return int(item["counter"].get("packets", 0))
    return 0
