"""A small internet of the tests' own: a network namespace with web hosts and a DNS zone.

The `netlab` fixture makes a network namespace joined to the host by a veth pair:
- host side 198.18.0.1/24, an address *of the host*, which sandboxes must not reach;
- inside: web servers answering their own name on port 80 at 198.18.0.10 (allowed.test),
  198.18.0.20 (denied.test), 198.19.0.10 (other.test) and 10.213.0.10 (private.test, a
  "private service"), and a DNS server at 198.18.0.53:53 for `test.` (tests/netlab_hosts.py),
  which logs every name it is asked (`netlab.queries()`).
The host routes 198.19.0.0/24 and 10.213.0.0/24 through the veth, so bubblewrap's pasta and
docker's bridge reach the lab as they would the internet. The ranges are the benchmarking
block (RFC 2544), public to the sandboxes' rules: the documentation blocks (192.0.2.0/24,
203.0.113.0/24...) are this workplace's own addresses (its registries answer at one), and a
lab route over them would cut the machine off; the fixture refuses to start over any route
already there. Nothing here sends a packet beyond loopback and the lab's own addresses.
Needs root (ip netns); skips otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HOST_ADDRESS = "198.18.0.1"
LAB_ADDRESS = "198.18.0.2"
LAB_NETWORK = "198.18.0.0/24"
ALLOWED = "198.18.0.10"
DENIED = "198.18.0.20"
OTHER = "198.19.0.10"
PRIVATE = "10.213.0.10"
DNS = "198.18.0.53"
ROUTED = ("198.19.0.0/24", "10.213.0.0/24")


@dataclass
class NetLab:
    namespace: str
    query_log: Path
    host_address: str = HOST_ADDRESS
    allowed: str = ALLOWED
    denied: str = DENIED
    other: str = OTHER
    private: str = PRIVATE
    dns: str = DNS

    @property
    def dns_upstream(self) -> str:
        """CORRAL_SANDBOX_DNS_UPSTREAM for executors under test."""
        return f"{DNS}:53"

    def queries(self) -> list[str]:
        """Every name the lab's DNS server was asked, in order."""
        try:
            return self.query_log.read_text().split()
        except FileNotFoundError:
            return []


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _teardown(namespace: str, veth: str) -> None:
    for network in ROUTED:
        # Only our own routes (through our veth): never another lab's.
        _ip("route", "del", network, "dev", veth, check=False)
    _ip("link", "del", veth, check=False)
    _ip("netns", "del", namespace, check=False)


def _routes_over(networks: tuple[str, ...]) -> list[str]:
    """Routes of the host (other than the default) that overlap the lab's networks."""
    import ipaddress

    wanted = [ipaddress.ip_network(n) for n in networks]
    found = []
    for line in _ip("-4", "route", "show", check=False).stdout.splitlines():
        target = line.split()[0] if line.split() else ""
        if target in ("default", ""):
            continue
        try:
            network = ipaddress.ip_network(target, strict=False)
        except ValueError:
            continue
        if any(network.overlaps(w) for w in wanted):
            found.append(line.strip())
    return found


@contextlib.contextmanager
def running_netlab(tmp: Path) -> Iterator[NetLab]:
    suffix = f"{os.getpid() % 100000}"
    namespace, veth, peer = f"corral-netlab-{suffix}", f"clab{suffix}", f"clabp{suffix}"
    if _ip("-4", "addr", "show", "to", f"{HOST_ADDRESS}/32", check=False).stdout.strip():
        pytest.fail(f"{HOST_ADDRESS} is already on this host: another test lab is running")
    _teardown(namespace, veth)
    overlapping = _routes_over((LAB_NETWORK, *ROUTED))
    if overlapping:
        pytest.fail(f"the test lab's ranges are in use on this host ({overlapping}): it would cut them off")
    setup = [
        ("netns", "add", namespace),
        ("link", "add", veth, "type", "veth", "peer", "name", peer),
        ("link", "set", peer, "netns", namespace),
        ("addr", "add", f"{HOST_ADDRESS}/24", "dev", veth),
        ("link", "set", veth, "up"),
        *[("route", "add", network, "via", LAB_ADDRESS, "dev", veth) for network in ROUTED],
        ("-n", namespace, "link", "set", "lo", "up"),
        ("-n", namespace, "addr", "add", f"{LAB_ADDRESS}/24", "dev", peer),
        *[
            ("-n", namespace, "addr", "add", f"{address}/32", "dev", peer)
            for address in (ALLOWED, DENIED, OTHER, PRIVATE, DNS)
        ],
        ("-n", namespace, "link", "set", peer, "up"),
        # No default route: the lab answers 198.18.0.0/24 only (docker masquerades and pasta
        # connects from 198.18.0.1), so nothing in it can reach past the host.
    ]
    hosts: subprocess.Popen[str] | None = None
    try:
        for args in setup:
            _ip(*args)
        # Docker's bridge and pasta both reach the lab through the host's forwarding.
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
        query_log = tmp / "dns-queries.log"
        query_log.touch()
        hosts = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, str(Path(__file__).with_name("netlab_hosts.py")),
             str(query_log)],
            stdout=subprocess.PIPE, text=True,
        )
        assert hosts.stdout is not None
        line = hosts.stdout.readline()
        if line.strip() != "ready":
            pytest.fail(f"the lab's hosts did not start: {line!r}")
        yield NetLab(namespace=namespace, query_log=query_log)
    finally:
        if hosts is not None:
            hosts.kill()
            hosts.wait(timeout=10)
        _teardown(namespace, veth)


@pytest.fixture(scope="session")
def netlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetLab]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("the network test lab needs root and iproute2 (ip netns)")
    with running_netlab(tmp_path_factory.mktemp("netlab")) as lab:
        yield lab


def wait_for_port(address: str, port: int, timeout: float = 10.0) -> None:
    """Waits until the lab answers on address:port (from the host's namespace)."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
