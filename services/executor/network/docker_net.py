"""The docker driver's sandbox network: a bridge Corral owns, filtered from the host's namespace.

Sandboxes with network are attached to one Docker network Corral creates (CORRAL_DOCKER_NETWORK,
`corral-sandboxes`: its own subnet, a fixed bridge name, inter-container traffic off). In the
host's network namespace, where the container cannot reach, one nftables table (`inet
corral_docker`; `corral_docker_<bridge>` for another bridge; shared by the host's executors on
that network) holds:
- `forward` (before Docker's own filter): packets from the bridge of connections already let
  through pass; a new one jumps to its sandbox's chain (nft.py's `egress_chain`) by source
  address (the `sandboxes` verdict map); a source no sandbox holds is refused (fail closed);
  nothing outside connects in;
- `input`: nothing from the bridge reaches the host (any of its addresses, its loopback
  listeners, the executor's ports), but the sandbox resolver's DNS;
- `prerouting`: DNS to the gateway port 53 goes to the resolver of the executor that owns the
  source (the `dns_ports` map: each executor serves its own sandboxes on a port of its own).
Each container's /etc/resolv.conf names the gateway (Docker's embedded resolver, which would
forward for it, is told the same), and DNS anywhere else is refused by the egress chain.

Per-sandbox sets and chains are named `x<executor>_<n>_...`; an executor removes its own at
start (state a crashed run left) and at stop. Where the executor cannot manage the host's
nftables (not root, or not in the Docker host's network namespace, as the compose deployment's
executor containers), `blocker` says why and a sandbox asking for network fails with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import itertools
import json
import os
import re
import shutil
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from corral.config import Settings
from corral.network_rules import IPAddress, IPNetwork, NetworkRules
from services.executor.network import nft
from services.executor.network.resolver import DnsServer, EgressStats, upstreams_from
from services.executor.network.status import NetworkStatus

log = structlog.get_logger()

# The host table of the sandbox network on bridge corral0 (the default); another bridge's is
# `corral_docker_<bridge>`: two deployments with networks of their own on one host each filter
# their own bridge, never overwriting the other's hook chains.
TABLE = "corral_docker"
DEFAULT_BRIDGE = "corral0"
SANDBOXES = "sandboxes"  # source address -> jump to the sandbox's egress chain
DNS_PORTS = "dns_ports"  # source address -> the port of its executor's resolver
LABEL_OWNER = "corral.owner"


class NetworkUnavailable(RuntimeError):
    """Networked sandboxes cannot be made with their policy enforced (the words say why)."""


@dataclass(frozen=True)
class BridgeNetwork:
    name: str
    bridge: str
    subnet: ipaddress.IPv4Network

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return next(self.subnet.hosts())

    @classmethod
    def from_settings(cls, settings: Settings) -> BridgeNetwork:
        subnet = ipaddress.ip_network(settings.docker_network_subnet)
        if not isinstance(subnet, ipaddress.IPv4Network) or subnet.prefixlen > 28:
            raise NetworkUnavailable(
                f"CORRAL_DOCKER_NETWORK_SUBNET {settings.docker_network_subnet!r}: an IPv4 subnet of /28 or larger"
            )
        return cls(settings.docker_network, settings.docker_network_bridge, subnet)

    @property
    def table(self) -> str:
        if self.bridge == DEFAULT_BRIDGE:
            return TABLE
        return f"{TABLE}_{re.sub(r'[^A-Za-z0-9_]', '_', self.bridge)}"

    def docker_options(self) -> dict[str, str]:
        return {
            "com.docker.network.bridge.name": self.bridge,
            "com.docker.network.bridge.enable_icc": "false",
            "com.docker.network.bridge.enable_ip_masquerade": "true",
        }


def base_script(net: BridgeNetwork) -> str:
    """The shared table's maps and hook chains (their rules replaced, the maps and per-sandbox
    chains kept): idempotent, one transaction, safe while other executors use the table."""
    t, b, gw = f"inet {net.table}", net.bridge, net.gateway
    refuse = ["meta l4proto tcp reject with tcp reset", "reject with icmpx type admin-prohibited"]
    lines = [
        f"add table {t}",
        f"add map {t} {SANDBOXES} {{ type ipv4_addr : verdict; }}",
        f"add map {t} {DNS_PORTS} {{ type ipv4_addr : inet_service; }}",
        # Before Docker's filter (priority 0), which would accept the bridge's traffic.
        f"add chain {t} forward {{ type filter hook forward priority -10; policy accept; }}",
        f"add chain {t} input {{ type filter hook input priority -10; policy accept; }}",
        f"add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}",
        f"flush chain {t} forward",
        f"flush chain {t} input",
        f"flush chain {t} prerouting",
        f'add rule {t} forward iifname "{b}" ct state established,related accept',
        f'add rule {t} forward iifname "{b}" ip saddr vmap @{SANDBOXES}',
        *(f'add rule {t} forward iifname "{b}" {r}' for r in refuse),  # an unknown source, IPv6
        f'add rule {t} forward oifname "{b}" ct state established,related accept',
        *(f'add rule {t} forward oifname "{b}" {r}' for r in refuse),
        f'add rule {t} prerouting iifname "{b}" ip daddr {gw} meta l4proto {{ tcp, udp }} th dport 53 '
        f"redirect to : ip saddr map @{DNS_PORTS}",
        # Only what the prerouting rule sent to a resolver; not even the resolvers' own ports.
        f'add rule {t} input iifname "{b}" ip daddr {gw} meta l4proto {{ tcp, udp }} ct status dnat '
        "ct original proto-dst 53 accept",
        *(f'add rule {t} input iifname "{b}" {r}' for r in refuse),
    ]
    return "\n".join(lines) + "\n"


def sandbox_script(
    table: str,
    names: nft.SetNames, rules: NetworkRules, denied: Sequence[IPAddress | IPNetwork], address: IPAddress, dns_port: int
) -> str:
    """One sandbox's sets, chains and map entries, added to the shared table."""
    sets = "".join(f"  {s}\n" for s in nft.set_definitions(names, rules, denied))
    chains = "".join(
        f"  chain {name} {{\n" + "".join(f"    {r}\n" for r in body) + "  }\n"
        for name, body in ((names.refuse, nft.refuse_rules(names)), (names.chain, nft.egress_chain(names, rules)))
    )
    return (
        f"table inet {table} {{\n{sets}{chains}}}\n"
        f"add element inet {table} {SANDBOXES} {{ {address} : jump {names.chain} }}\n"
        f"add element inet {table} {DNS_PORTS} {{ {address} : {dns_port} }}\n"
    )


def removal_script(name: str, table: dict[str, Any], prefix: str) -> str:
    """Deletes every set, chain and counter named `prefix...` and the map entries that lead to
    them, from `nft -j list table` output (`table`)."""
    items = [next(iter(item.items())) for item in table.get("nftables", []) if "metainfo" not in item]
    t = f"inet {name}"
    lines: list[str] = []
    addresses = []
    for kind, item in items:
        if kind == "map" and item.get("name") == SANDBOXES:
            for key, verdict in item.get("elem", []):
                if str(verdict.get("jump", {}).get("target", "")).startswith(prefix):
                    addresses.append(str(key))
                    lines.append(f"delete element {t} {SANDBOXES} {{ {key} }}")
    for kind, item in items:
        if kind == "map" and item.get("name") == DNS_PORTS:
            for key, _ in item.get("elem", []):
                if str(key) in addresses:
                    lines.append(f"delete element {t} {DNS_PORTS} {{ {key} }}")
    chains = [item["name"] for kind, item in items if kind == "chain" and item["name"].startswith(prefix)]
    lines += [f"flush chain {t} {c}" for c in chains]
    # The egress chains jump to the refusal chains: those go last.
    lines += [f"delete chain {t} {c}" for c in sorted(chains, key=lambda c: c.endswith("refuse"))]
    lines += [
        f"delete {kind} {t} {item['name']}"
        for kind, item in items
        if kind in ("set", "counter") and item["name"].startswith(prefix)
    ]
    return "\n".join(lines) + "\n" if lines else ""


async def list_table(name: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "nft", "-j", "list", "table", "inet", name, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise nft.NftError(f"cannot read the nftables table {name}: {err.decode(errors='replace').strip()}")
    result: dict[str, Any] = json.loads(out or b"{}")
    return result


def host_addresses() -> list[IPAddress]:
    """Every address of the host's interfaces (refused as destinations besides the input hook)."""
    found: list[IPAddress] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            found.append(ipaddress.IPv6Address(bytes.fromhex(raw)))
    with contextlib.suppress(OSError):
        # /proc/net/fib_trie lists the local IPv4 addresses ("/32 host LOCAL").
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
        for previous, line in itertools.pairwise(lines):
            if "/32 host LOCAL" in line:
                with contextlib.suppress(ValueError):
                    found.append(ipaddress.IPv4Address(previous.split()[-1]))
    return sorted(set(found), key=lambda a: (a.version, a))


class ContainerEgress:
    """One networked container's rules, counters and resolved addresses (resolver.Egress and
    status.SandboxNetwork)."""

    def __init__(self, owner: DockerNetwork, prefix: str, address: IPAddress, rules: NetworkRules, stats: EgressStats):
        self.owner = owner
        self.prefix = prefix
        self.names = nft.SetNames(prefix=prefix)
        self.address = address
        self._rules = rules
        self._stats = stats
        self._lock = asyncio.Lock()

    @property
    def rules(self) -> NetworkRules:
        return self._rules

    @property
    def stats(self) -> EgressStats:
        return self._stats

    async def open_resolved(self, addresses: Sequence[IPAddress], ttl: int) -> None:
        async with self._lock:
            await nft.run_nft(nft.resolved_script(self.owner.net.table, self.names, addresses, ttl))

    async def update(self, rules: NetworkRules) -> None:
        async with self._lock:
            await nft.run_nft(nft.update_script(self.owner.net.table, self.names, rules, self.owner.denied))
            self._rules = rules

    async def status(self) -> NetworkStatus:
        return NetworkStatus(
            enabled=True,
            rules=self._rules,
            refused_connections=await nft.read_counter(self.owner.net.table, self.names.refused),
            refused_lookups=self._stats.refused_lookups,
            recent_refused_names=list(self._stats.recent_refused_names),
        )


class DockerNetwork:
    """The executor's part of the sandbox network (see the module docstring)."""

    def __init__(self, settings: Settings, api: Any) -> None:
        self.settings = settings
        self.api = api
        self.net = BridgeNetwork.from_settings(settings)
        self.executor_prefix = ""
        self.blocker = "not started"
        self.denied: list[IPAddress | IPNetwork] = []
        self.dns: DnsServer | None = None
        self.dns_port = 0
        self._by_address: dict[str, ContainerEgress] = {}
        self._count = 0
        self.resolv_conf = settings.tasks_dir / ".network" / "resolv.conf"

    @property
    def description(self) -> str:
        if self.blocker:
            return f"sandboxes with network refused: {self.blocker}"
        return f"network: docker network {self.net.name} ({self.net.subnet}), filtered by nftables table inet {self.net.table}"

    async def start(self, executor_id: str) -> None:
        self.executor_prefix = "x" + hashlib.sha256(executor_id.encode()).hexdigest()[:8] + "_"
        try:
            await asyncio.to_thread(self._prepare_host)
            await nft.run_nft(base_script(self.net))
            await self._remove(self.executor_prefix)
            await self._start_dns()
        except (NetworkUnavailable, nft.NftError, OSError) as exc:
            self.blocker = str(exc)
            log.warning("docker sandboxes cannot have network", reason=self.blocker)
            return
        except Exception as exc:  # the Docker API's errors
            self.blocker = f"cannot set up the docker network {self.net.name}: {exc}"
            log.warning("docker sandboxes cannot have network", reason=self.blocker)
            return
        self.blocker = ""

    def _prepare_host(self) -> None:
        if os.geteuid() != 0:
            raise NetworkUnavailable("the executor is not root, so it cannot manage the host's nftables")
        if shutil.which("nft") is None:
            raise NetworkUnavailable("nft (Debian's nftables) is not installed")
        self._ensure_docker_network()
        if not os.path.exists(f"/sys/class/net/{self.net.bridge}"):
            raise NetworkUnavailable(
                f"the executor does not run in the Docker host's network namespace (no interface "
                f"{self.net.bridge} here), so it cannot filter the sandboxes' traffic; run it on the "
                "host (the compose deployment's executors cannot give sandboxes network)"
            )
        self.denied = [self.net.subnet, *host_addresses()]
        self.resolv_conf.parent.mkdir(parents=True, exist_ok=True)
        self.resolv_conf.write_text(f"nameserver {self.net.gateway}\noptions edns0\n")
        os.chmod(self.resolv_conf, 0o644)

    def _ensure_docker_network(self) -> None:
        import docker.errors
        import docker.types

        net = self.net
        try:
            found = self.api.inspect_network(net.name)
        except docker.errors.NotFound:
            ipam = docker.types.IPAMConfig(
                pool_configs=[docker.types.IPAMPool(subnet=str(net.subnet), gateway=str(net.gateway))]
            )
            try:
                self.api.create_network(
                    net.name, driver="bridge", options=net.docker_options(), ipam=ipam,
                    labels={LABEL_OWNER: "corral"}, check_duplicate=True,
                )
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # another executor made it meanwhile
                    raise
            found = self.api.inspect_network(net.name)
        options = found.get("Options") or {}
        subnets = [c.get("Subnet") for c in (found.get("IPAM") or {}).get("Config") or []]
        wrong = [f"{k}={options.get(k)!r}" for k, v in net.docker_options().items() if options.get(k) != v]
        if found.get("Driver") != "bridge" or wrong or subnets != [str(net.subnet)]:
            raise NetworkUnavailable(
                f"the docker network {net.name} exists with other settings ({', '.join(wrong) or subnets}); "
                f"Corral needs it as it makes it (bridge {net.bridge}, subnet {net.subnet}, no "
                f"inter-container traffic): remove it (docker network rm {net.name})"
            )

    async def _start_dns(self) -> None:
        upstreams = upstreams_from(self.settings.sandbox_dns_upstream)
        if not upstreams:
            raise NetworkUnavailable("no upstream resolver (none in /etc/resolv.conf; set CORRAL_SANDBOX_DNS_UPSTREAM)")
        self.dns = DnsServer(upstreams, lambda peer: self._by_address.get(peer))
        udp, tcp = _bind_pair(str(self.net.gateway))
        self.dns_port = udp.getsockname()[1]
        await self.dns.serve_udp(udp)
        await self.dns.serve_tcp(tcp)

    async def stop(self) -> None:
        if self.dns is not None:
            await self.dns.close()
        if not self.blocker:
            with contextlib.suppress(nft.NftError):
                await self._remove(self.executor_prefix)

    async def _remove(self, prefix: str) -> None:
        script = removal_script(self.net.table, await list_table(self.net.table), prefix)
        if script:
            await nft.run_nft(script)

    # --- per container -----------------------------------------------------------------------

    async def attach(self, address: str, rules: NetworkRules, stats: EgressStats) -> ContainerEgress:
        """Puts a started container's address under its rules (before its first step)."""
        if self.blocker:
            raise NetworkUnavailable(self.blocker)
        self._count += 1
        prefix = f"{self.executor_prefix}{self._count}_"
        ip = ipaddress.ip_address(address)
        egress = ContainerEgress(self, prefix, ip, rules, stats)
        script = sandbox_script(self.net.table, egress.names, rules, self.denied, ip, self.dns_port)
        try:
            await nft.run_nft(script)
        except nft.NftError as exc:
            if "File exists" not in str(exc):
                raise
            # A crashed executor's entries for an address Docker handed out again: ours now.
            for map_name in (SANDBOXES, DNS_PORTS):
                with contextlib.suppress(nft.NftError):
                    await nft.run_nft(f"delete element inet {self.net.table} {map_name} {{ {ip} }}\n")
            await nft.run_nft(script)
        self._by_address[str(ip)] = egress
        return egress

    async def detach(self, egress: ContainerEgress) -> None:
        """Before the container goes (while it still holds its address)."""
        if self._by_address.get(str(egress.address)) is egress:
            del self._by_address[str(egress.address)]
        await self._remove(egress.prefix)

    def container_options(self) -> dict[str, Any]:
        """What create_host_config needs for a networked container."""
        if self.blocker:
            raise NetworkUnavailable(self.blocker)
        return {"network_mode": self.net.name, "dns": [str(self.net.gateway)]}


def _bind_pair(host: str) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on one free port of `host`."""
    for _ in range(20):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((host, 0))
        port = udp.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind((host, port))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(64)
        udp.setblocking(False)
        tcp.setblocking(False)
        return udp, tcp
    raise NetworkUnavailable(f"no free port for the sandbox resolver on {host}")
