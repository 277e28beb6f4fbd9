"""The network of one bubblewrap sandbox: its own namespace, rules, resolver and pasta.

Made in this order, each before anything of the sandbox runs:
1. a named network namespace (netns.py), loopback up;
2. its nftables ruleset (nft.sandbox_table): the host's loopback and addresses, link-local
   (metadata), private ranges and every resolver but ours refused; the rules' allow/deny;
3. the sandbox's resolver (resolver.DnsServer) on 127.0.0.53:53, UDP and TCP, inside the
   namespace, served by the executor's event loop; the sandbox's /etc/resolv.conf names it;
4. pasta (pasta.py), the namespace's way out, once the rules hold; unprivileged where it can
   be (the namespace is then made inside a user namespace pasta's uid owns).
bwrap then starts inside the namespace (`nsenter --net`, bwrap `--share-net` shares *it*).
close() undoes all of it; so does a start that failed or was cancelled half way (the blocking
part runs in a thread the close waits for, so nothing it makes is missed).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Sequence

import structlog

from corral.config import Settings
from corral.network_rules import IPAddress, NetworkRules
from services.executor.network import netns, nft
from services.executor.network.pasta import Pasta, tun_blocker
from services.executor.network.resolver import DnsServer, EgressStats, upstreams_from
from services.executor.network.status import NetworkStatus

log = structlog.get_logger("corral.executor.network")

RESOLVER_ADDRESS = "127.0.0.53"
RESOLVER_PORT = 53
RESOLV_CONF = f"nameserver {RESOLVER_ADDRESS}\noptions timeout:2 attempts:1\n"
# Each tool a sandbox's network needs, and the Debian package that has it.
TOOLS = {"ip": "iproute2", "nft": "nftables", "nsenter": "util-linux", "pasta": "passt"}


def network_blocker(euid: int | None = None) -> str:
    """Why sandboxes of this host cannot have an isolated network ("" when they can)."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    reasons = []
    if missing:
        packages = sorted({TOOLS[tool] for tool in missing})
        reasons.append(f"{', '.join(missing)} not installed (apt-get install {' '.join(packages)})")
    if (euid if euid is not None else os.geteuid()) != 0:
        reasons.append("the executor is not root (it makes each sandbox's network namespace)")
    return "; ".join(reasons)


def pasta_uid(settings: Settings) -> tuple[int | None, str]:
    """The uid pasta runs as, or None (as root) with the reason it cannot run unprivileged."""
    uid = settings.sandbox_network_helper_uid
    if uid in (0, settings.sandbox_host_uid):
        return None, f"sandbox_network_helper_uid {uid} is root or the sandboxes' own uid"
    blocker = tun_blocker(uid)
    return (None, blocker) if blocker else (uid, "")


async def choose_pasta_uid(settings: Settings) -> tuple[int | None, str]:
    """pasta_uid, with the host guard for that uid loaded (nft.pasta_guard_table): without the
    guard, pasta runs as root rather than unguarded (the reason says why)."""
    uid, why = pasta_uid(settings)
    if uid is None:
        return uid, why
    try:
        await nft.run_nft(nft.pasta_guard_table(uid))
    except nft.NftError as exc:
        return None, f"cannot load the host table that keeps pasta off the host's addresses: {exc}"
    return uid, ""


def isolation_words(blocker: str, pasta_as: tuple[int | None, str] = (None, "")) -> str:
    """The executor status's words for the network isolation in use."""
    if blocker:
        return f"network: unavailable, tasks asking for it fail ({blocker})"
    uid, why_root = pasta_as
    helper = f"pasta as uid {uid}, no host privilege" if uid is not None else f"pasta as root: {why_root}"
    return (
        f"network: a namespace per sandbox ({helper}), nftables egress rules, "
        "Corral's resolver; host, loopback and link-local unreachable, private ranges unless allowed"
    )


def _bind_resolver_sockets() -> tuple[socket.socket, socket.socket]:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        for sock in (udp, tcp):
            sock.setblocking(False)
            sock.bind((RESOLVER_ADDRESS, RESOLVER_PORT))
        tcp.listen(16)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    return udp, tcp


def _load_ruleset(name: str, script: str) -> None:
    """`nft -f -` inside the namespace (blocking: the setup thread's)."""
    argv = ["nsenter", f"--net={netns.netns_path(name)}", "--", "nft", "-f", "-"]
    try:
        done = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=netns.COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise nft.NftError(f"cannot run nft: {exc}") from exc
    if done.returncode != 0:
        raise nft.NftError(f"nft refused the sandbox's network rules: {done.stderr.strip()}")


class SandboxNetwork:
    """One sandbox's namespace, rules, resolver and pasta; the resolver's `Egress` too."""

    def __init__(
        self,
        settings: Settings,
        prefix: str,
        rules: NetworkRules,
        on_refused: Callable[[str], None] | None = None,
        helper_uid: int | None = None,
    ) -> None:
        self.name = f"{prefix}{uuid.uuid4().hex[:12]}"
        self.helper_uid = helper_uid
        self._rules = rules
        self._stats = EgressStats(on_refused=on_refused)
        self.dns = DnsServer(upstreams_from(settings.sandbox_dns_upstream), lambda peer: self)
        self.pasta = Pasta(shutil.which("pasta") or "pasta", self.name, helper_uid)
        self._sockets: list[socket.socket] = []
        self._setup: asyncio.Future[None] | None = None
        self._teardown: asyncio.Future[None] | None = None

    # -- the resolver's Egress ----------------------------------------------------------------

    @property
    def rules(self) -> NetworkRules:
        return self._rules

    @property
    def stats(self) -> EgressStats:
        return self._stats

    async def open_resolved(self, addresses: Sequence[IPAddress], ttl: int) -> None:
        await nft.run_nft(nft.resolved_script(nft.TABLE, nft.SetNames(), addresses, ttl), netns=self.name)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def netns_path(self) -> str:
        return netns.netns_path(self.name)

    async def start(self) -> None:
        """Makes everything (see the module docstring); raises netns.NetnsError / nft.NftError.
        On failure or cancellation the caller closes it."""
        self._setup = asyncio.ensure_future(asyncio.to_thread(self._make_namespace))
        await asyncio.shield(self._setup)
        for sock, serve in zip(self._sockets, (self.dns.serve_udp, self.dns.serve_tcp), strict=True):
            await serve(sock)
        self._setup = asyncio.ensure_future(asyncio.to_thread(self.pasta.start))
        await asyncio.shield(self._setup)

    def _make_namespace(self) -> None:
        netns.add(self.name, owner_uid=self.helper_uid)
        table = nft.sandbox_table(self._rules, netns.host_addresses(), RESOLVER_PORT)
        _load_ruleset(self.name, table)
        self._sockets = list(netns.call_inside(self.name, _bind_resolver_sockets))

    async def update(self, rules: NetworkRules) -> None:
        """New rules for new connections and lookups, in one nft transaction."""
        script = nft.update_script(nft.TABLE, nft.SetNames(), rules, await asyncio.to_thread(netns.host_addresses))
        old, self._rules = self._rules, rules
        try:
            await nft.run_nft(script, netns=self.name)
        except BaseException:
            self._rules = old
            raise

    async def status(self) -> NetworkStatus:
        refused = await nft.read_counter(nft.TABLE, nft.SetNames().refused, netns=self.name)
        return NetworkStatus(
            enabled=True,
            rules=self._rules,
            refused_connections=refused,
            refused_lookups=self._stats.refused_lookups,
            recent_refused_names=list(self._stats.recent_refused_names),
        )

    async def close(self) -> None:
        """Stops pasta and the resolver, deletes the namespace. Idempotent; finishes even when
        the caller is cancelled meanwhile."""
        if self._teardown is None:
            self._teardown = asyncio.ensure_future(self._close())
        await asyncio.shield(self._teardown)

    async def _close(self) -> None:
        if self._setup is not None:
            # A start cancelled half way: its thread goes on; what it makes is undone after.
            await asyncio.wait([self._setup])
        await self.dns.close()
        for sock in self._sockets:
            sock.close()
        words = await asyncio.to_thread(self.pasta.stop)
        if words:
            log.debug("pasta ended", netns=self.name, words=words)
        await asyncio.to_thread(netns.delete, self.name)
