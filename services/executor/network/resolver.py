"""The DNS resolver Corral runs for sandboxes with network: the only one they can reach.

It answers a name only when the sandbox's rules allow it (`NetworkRules.name_allowed`); any
other name gets REFUSED and nothing is forwarded, so a denied name cannot carry data out (the
DNS-exfiltration bypass of allowlists that let UDP/53 out to any resolver). Allowed queries go
to the upstream resolvers (the host's, or CORRAL_SANDBOX_DNS_UPSTREAM), and of the answer:
- addresses the rules refuse are removed (a public name answering 10.0.0.5 or 127.0.0.1 is DNS
  rebinding, not a way in);
- the rest are opened for the sandbox (`Egress.open_resolved`) before the answer is returned,
  so the connection that follows finds its address allowed.

One `DnsServer` serves on sockets given to it (UDP and TCP) and finds the sandbox a query is
for with `egress_for(peer address)`: a bubblewrap sandbox has a socket of its own inside its
namespace; docker sandboxes share one on their network's gateway, told apart by source address.
The wire format is dnslib's; the server loop is asyncio's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

import structlog
from dnslib import QTYPE, RCODE, DNSRecord

from corral.network_rules import IPAddress, NetworkRules

log = structlog.get_logger("corral.executor.dns")

UPSTREAM_TIMEOUT = 2.0
MAX_TCP_MESSAGE = 65535
# Refused names remembered per sandbox for its status (the count goes on past it).
RECENT_REFUSALS = 20


class Egress(Protocol):
    """What the resolver needs of one sandbox's network."""

    @property
    def rules(self) -> NetworkRules: ...

    @property
    def stats(self) -> EgressStats: ...

    async def open_resolved(self, addresses: Sequence[IPAddress], ttl: int) -> None: ...


@dataclass
class EgressStats:
    """Counts of one sandbox's refusals (connections are counted by nftables, lookups here)."""

    refused_lookups: int = 0
    answered_lookups: int = 0
    recent_refused_names: list[str] = field(default_factory=list)
    # Called with each refused name (the executor turns it into a sandbox event).
    on_refused: Callable[[str], None] | None = None

    def refused(self, name: str) -> None:
        self.refused_lookups += 1
        self.recent_refused_names = [*self.recent_refused_names, name][-RECENT_REFUSALS:]
        if self.on_refused is not None:
            self.on_refused(name)


def _reply(request: DNSRecord, rcode: int) -> bytes:
    reply = request.reply()
    reply.header.rcode = rcode
    return bytes(reply.pack())


class DnsServer:
    def __init__(
        self,
        upstreams: Sequence[tuple[str, int]],
        egress_for: Callable[[str], Egress | None],
    ) -> None:
        self.upstreams = list(upstreams)
        self.egress_for = egress_for
        self._tasks: set[asyncio.Task[None]] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._transports: list[asyncio.BaseTransport] = []

    # -- answering ---------------------------------------------------------------------------

    async def answer(self, query: bytes, peer: str, tcp: bool = False) -> bytes | None:
        """The reply to one query from `peer`; None to drop it (not a DNS query at all)."""
        try:
            request = DNSRecord.parse(query)
        except Exception:  # dnslib raises several kinds on garbage
            return None
        if request.header.qr or not request.questions:
            return None
        egress = self.egress_for(peer)
        if egress is None:
            return _reply(request, RCODE.REFUSED)
        if len(request.questions) != 1:
            return _reply(request, RCODE.FORMERR)
        name = str(request.questions[0].qname).rstrip(".").lower()
        if not egress.rules.name_allowed(name):
            egress.stats.refused(name)
            log.info("dns lookup refused", name=name, peer=peer)
            return _reply(request, RCODE.REFUSED)
        raw = await self._forward(query, tcp)
        if raw is None:
            return _reply(request, RCODE.SERVFAIL)
        try:
            response = DNSRecord.parse(raw)
        except Exception:
            return _reply(request, RCODE.SERVFAIL)
        egress.stats.answered_lookups += 1
        return await self._filtered(response, egress)

    async def _filtered(self, response: DNSRecord, egress: Egress) -> bytes:
        kept, opened, ttl = [], [], 0
        for rr in response.rr:
            if rr.rtype in (QTYPE.A, QTYPE.AAAA):
                address = ipaddress.ip_address(str(rr.rdata))
                if not egress.rules.address_allowed(address, resolved_for_allowed_name=True):
                    continue
                opened.append(address)
                ttl = max(ttl, int(rr.ttl))
            kept.append(rr)
        response.rr = kept
        if opened and egress.rules.restricted:
            await egress.open_resolved(opened, ttl)
        return bytes(response.pack())

    async def _forward(self, query: bytes, tcp: bool) -> bytes | None:
        for host, port in self.upstreams:
            try:
                if tcp:
                    return await asyncio.wait_for(_ask_tcp(host, port, query), UPSTREAM_TIMEOUT)
                return await asyncio.wait_for(_ask_udp(host, port, query), UPSTREAM_TIMEOUT)
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                log.warning("upstream resolver did not answer", upstream=f"{host}:{port}", error=str(exc))
        return None

    # -- serving -----------------------------------------------------------------------------

    async def serve_udp(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self), sock=sock)
        self._transports.append(transport)

    async def serve_tcp(self, sock: socket.socket) -> None:
        server = await asyncio.start_server(self._handle_tcp, sock=sock)
        self._servers.append(server)

    async def _handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            while True:
                size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))[0]
                query = await asyncio.wait_for(reader.readexactly(size), 10)
                reply = await self.answer(query, str(peer[0]) if peer else "", tcp=True)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for transport in self._transports:
            transport.close()
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._transports.clear()
        self._servers.clear()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (asyncio's selector datagram transport is not a DatagramTransport subclass.)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.server.spawn(self._reply(data, addr))

    async def _reply(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = await self.server.answer(data, str(addr[0]))
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            if len(reply) > 512:
                # Too big for plain UDP: truncated, the client asks again over TCP.
                with contextlib.suppress(Exception):
                    record = DNSRecord.parse(reply)
                    record.rr, record.auth, record.ar = [], [], []
                    record.header.tc = 1
                    reply = bytes(record.pack())
            self.transport.sendto(reply, addr)


async def _ask_udp(host: str, port: int, query: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
            if not answer.done() and data[:2] == query[:2]:
                answer.set_result(data)

        def error_received(self, exc: Exception) -> None:
            if not answer.done():
                answer.set_exception(exc)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=(host, port))
    try:
        transport.sendto(query)
        return await answer
    finally:
        transport.close()


async def _ask_tcp(host: str, port: int, query: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(struct.pack("!H", len(query)) + query)
        await writer.drain()
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        return await reader.readexactly(size)
    finally:
        writer.close()


def host_upstreams(resolv_conf: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The host's nameservers, as its resolver would ask them."""
    upstreams = []
    with contextlib.suppress(OSError):
        for line in open(resolv_conf, encoding="utf-8", errors="replace"):
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    upstreams.append((str(ipaddress.ip_address(parts[1].split("%")[0])), 53))
    return upstreams


def upstreams_from(setting: str) -> list[tuple[str, int]]:
    """The resolvers sandboxes' queries go to: CORRAL_SANDBOX_DNS_UPSTREAM's, else the host's."""
    return parse_upstreams(setting) or host_upstreams()


def parse_upstreams(text: str) -> list[tuple[str, int]]:
    """`CORRAL_SANDBOX_DNS_UPSTREAM`: "203.0.113.53:53,[2001:db8::53]:53" (port 53 if none)."""
    upstreams = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        host, port = item, 53
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else 53
        elif item.count(":") == 1:
            host, port_text = item.split(":")
            port = int(port_text)
        upstreams.append((str(ipaddress.ip_address(host)), port))
    return upstreams
