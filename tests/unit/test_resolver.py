"""The sandboxes' resolver (services/executor/network/resolver.py) against a real upstream
DNS server on loopback: allowed names answered, refused names never forwarded, refused
addresses stripped, answered addresses opened before the reply."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from corral.network_rules import IPAddress, NetworkRules
from services.executor.network.resolver import DnsServer, EgressStats, parse_upstreams

ZONE = {"pypi.org": "203.0.113.10", "evil.test": "203.0.113.66", "rebind.test": "10.0.0.5"}


class Zone(BaseResolver):  # type: ignore[misc]
    def __init__(self) -> None:
        self.asked: list[str] = []

    def resolve(self, request, handler):  # type: ignore[no-untyped-def]
        name = str(request.q.qname).rstrip(".")
        self.asked.append(name)
        reply = request.reply()
        if name in ZONE:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ZONE[name]), ttl=60))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


@pytest.fixture
def upstream() -> Iterator[tuple[Zone, int]]:
    zone = Zone()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    quiet = DNSLogger(log="-request,-reply,-recv,-send")
    servers = [DNSServer(zone, address="127.0.0.1", port=port, tcp=tcp, logger=quiet) for tcp in (False, True)]
    for server in servers:
        server.start_thread()
    yield zone, port
    for server in servers:
        server.stop()


@dataclass
class FakeSandboxEgress:
    """The sandbox side of the resolver's contract; records what it was asked to open."""

    rules: NetworkRules
    stats: EgressStats = field(default_factory=EgressStats)
    opened: list[str] = field(default_factory=list)

    async def open_resolved(self, addresses: Sequence[IPAddress], ttl: int) -> None:
        self.opened += [str(a) for a in addresses]


async def ask(server: DnsServer, name: str) -> DNSRecord:
    reply = await server.answer(bytes(DNSRecord.question(name).pack()), "127.0.0.1")
    assert reply is not None
    return DNSRecord.parse(reply)


async def test_only_allowed_names_are_forwarded_and_answered(upstream: tuple[Zone, int]) -> None:
    zone, port = upstream
    egress = FakeSandboxEgress(NetworkRules.parse(["pypi.org", "rebind.test"]))
    server = DnsServer([("127.0.0.1", port)], lambda peer: egress)
    answer = await ask(server, "pypi.org")
    assert [str(rr.rdata) for rr in answer.rr] == ["203.0.113.10"]
    assert egress.opened == ["203.0.113.10"]  # opened before the sandbox saw the answer

    refused = await ask(server, "evil.test")
    assert refused.header.rcode == RCODE.REFUSED and not refused.rr
    assert "evil.test" not in zone.asked  # never forwarded: no channel out
    assert egress.stats.refused_lookups == 1 and egress.stats.recent_refused_names == ["evil.test"]

    rebound = await ask(server, "rebind.test")  # allowed name, private answer: stripped
    assert not rebound.rr and "10.0.0.5" not in egress.opened


async def test_unknown_peer_and_garbage(upstream: tuple[Zone, int]) -> None:
    _, port = upstream
    server = DnsServer([("127.0.0.1", port)], lambda peer: None)
    assert (await ask(server, "pypi.org")).header.rcode == RCODE.REFUSED
    assert await server.answer(b"\x00\x01garbage", "127.0.0.1") is None


async def test_served_over_udp_and_tcp(upstream: tuple[Zone, int]) -> None:
    _, port = upstream
    egress = FakeSandboxEgress(NetworkRules())
    server = DnsServer([("127.0.0.1", port)], lambda peer: egress)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", udp.getsockname()[1]))
    tcp.listen()
    await server.serve_udp(udp)
    await server.serve_tcp(tcp)
    try:
        serving = udp.getsockname()[1]
        for use_tcp in (False, True):
            raw = await asyncio.to_thread(DNSRecord.question("pypi.org").send, "127.0.0.1", serving, use_tcp, 5)
            assert [str(rr.rdata) for rr in DNSRecord.parse(raw).rr] == ["203.0.113.10"]
        assert not egress.opened  # default rules: public addresses need no opening
    finally:
        await server.close()


def test_upstream_setting() -> None:
    assert parse_upstreams("203.0.113.53:5353, 198.51.100.1,[2001:db8::53]:53") == [
        ("203.0.113.53", 5353), ("198.51.100.1", 53), ("2001:db8::53", 53)
    ]
