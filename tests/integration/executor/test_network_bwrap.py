"""A bubblewrap sandbox with network: its own namespace, reaching the lab and nothing of the host.

Before (issue 10), `"network": true` made bwrap share the host's namespace: a step reached every
listener on the host's loopback (the executor's own gRPC port, the scheduler, the memory
service), the host's addresses and 169.254.169.254. Now each networked sandbox has a namespace
of its own (pasta for the way out, nftables rules the sandbox cannot touch, Corral's resolver),
and these tests attack it from inside: every refusal is a reset from the namespace's own rules
(ConnectionRefusedError at once, never a timeout: the packet never leaves).

Real sandboxes, real pasta and nft, and the test lab (tests/netlab.py) standing in for the
internet; nothing is sent beyond loopback and the lab's addresses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from netlab import NetLab

from corral.config import Settings
from corral.errors import FailedPrecondition
from corral.network_rules import NetworkRules
from services.executor.drivers.base import ProcessRequest, Sandbox, SandboxConfig, SandboxError, SandboxLimits
from services.executor.drivers.bubblewrap import BubblewrapDriver
from services.executor.network import bwrap_net, netns

from .conftest import ExecutorFactory, spec

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="a sandbox's own network namespace needs a root executor"),
    pytest.mark.skipif(bool(bwrap_net.network_blocker()), reason=f"no sandbox network here: {bwrap_net.network_blocker()}"),
]

# Run inside the sandbox: tries each (host, port) of argv[1] (JSON), prints one verdict a line.
PROBE = """
import json, socket, sys, time
for host, port in json.loads(sys.argv[1]):
    start = time.monotonic()
    try:
        s = socket.create_connection((host, port), timeout=8)
        s.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
        body = b""
        while chunk := s.recv(4096):
            body += chunk
        body = body.decode(errors="replace")
        print(host, port, "connected", body.strip().rsplit("\\n", 1)[-1])
    except OSError as e:
        print(host, port, type(e).__name__)
"""


@pytest.fixture
def sandbox_driver() -> str:
    return "bubblewrap"


@pytest.fixture
async def driver(tmp_path: Path, netlab: NetLab) -> AsyncIterator[BubblewrapDriver]:
    settings = Settings(data_dir=tmp_path / "data", bwrap_warm_pool=0, sandbox_dns_upstream=netlab.dns_upstream)
    started = BubblewrapDriver(settings)
    await started.start(f"test-{os.urandom(4).hex()}")
    yield started
    await started.stop()


def config_for(driver: BubblewrapDriver, rules: NetworkRules | None = None, network: bool = True) -> SandboxConfig:
    task_id = f"t-{os.urandom(4).hex()}"
    task_dir = driver.settings.tasks_dir / task_id
    driver.prepare_task_dir(task_dir)
    return SandboxConfig(
        task_id=task_id,
        host_task_dir=task_dir,
        limits=SandboxLimits.resolve(driver.settings),
        network=network,
        network_rules=rules or NetworkRules(),
    )


@pytest.fixture
async def networked(driver: BubblewrapDriver) -> AsyncIterator[Sandbox]:
    sandbox = await driver.create(config_for(driver))
    yield sandbox
    await sandbox.close()


async def shell(sandbox: Sandbox, code: str) -> tuple[int | None, str, str]:
    result = await sandbox.run(ProcessRequest(kind="shell", code=code, timeout=60), lambda stream, text: None)
    return result.exit_code, result.stdout, result.stderr


async def probe(sandbox: Sandbox, targets: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
    result = await sandbox.run(
        ProcessRequest(kind="argv", argv=("python3", "-c", PROBE, json.dumps(targets)), timeout=60),
        lambda stream, text: None,
    )
    assert result.exit_code == 0, result.stderr
    verdicts = {}
    for line in result.stdout.splitlines():
        host, port, verdict = line.split(" ", 2)
        verdicts[(host, int(port))] = verdict
    return verdicts


def plain_host_addresses() -> list[str]:
    """The host's addresses a socket can name without a scope (link-local v6 left out)."""
    return [str(a) for a in netns.host_addresses() if not (a.version == 6 and a.is_link_local)]


def own_namespaces(driver: BubblewrapDriver) -> list[str]:
    return [name for name in netns.names() if name.startswith(driver.netns_prefix)]


def own_user_namespaces(driver: BubblewrapDriver) -> list[str]:
    """The kept user namespaces (owners of unprivileged pasta's network namespaces)."""
    if not netns.USERNS_DIR.exists():
        return []
    return [name for name in os.listdir(netns.USERNS_DIR) if name.startswith(driver.netns_prefix)]


def own_pastas(driver: BubblewrapDriver) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline[0].endswith(b"pasta") and any(driver.netns_prefix.encode() in arg for arg in cmdline):
            found.append(int(pid))
    return found


class Listener:
    """A TCP listener on every address of the host (v4 and v6), counting connections."""

    def __init__(self) -> None:
        self.accepted = 0
        self.servers: list[asyncio.Server] = []
        self.port = 0

    async def __aenter__(self) -> Listener:
        server = await asyncio.start_server(self._accept, "0.0.0.0", 0)
        self.port = server.sockets[0].getsockname()[1]
        self.servers = [server]
        if socket.has_ipv6:
            self.servers.append(await asyncio.start_server(self._accept, "::", self.port))
        return self

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.close()

    async def __aexit__(self, *exc: object) -> None:
        for server in self.servers:
            server.close()


async def test_the_host_and_the_metadata_address_are_refused_at_once(
    networked: Sandbox, netlab: NetLab
) -> None:
    """Before: a step connected to the host's loopback and interfaces (shared namespace). Now
    each is refused by the sandbox's own namespace, while the lab answers."""
    async with Listener() as listener:
        targets = [("127.0.0.1", listener.port), ("::1", listener.port), (netlab.host_address, listener.port)]
        targets += [(address, listener.port) for address in plain_host_addresses()]
        targets += [("169.254.169.254", 80), (netlab.allowed, 80)]
        verdicts = await probe(networked, targets)
    assert verdicts.pop((netlab.allowed, 80)) == "connected allowed.test"
    assert set(verdicts.values()) == {"ConnectionRefusedError"}, verdicts
    assert listener.accepted == 0
    status = await networked.network_status()
    # The metadata address and the lab's host side went through the rules (the host's other
    # addresses are the namespace's own, copied by pasta: refused by its empty loopback).
    assert status.enabled and status.refused_connections >= 2


async def test_the_hosts_abstract_unix_sockets_are_out_of_reach(networked: Sandbox) -> None:
    """Abstract unix sockets belong to a network namespace: with the host's shared, a step
    reached every one of them (X servers, D-Bus, containerd's); not with its own."""
    name = f"corral-test-{os.urandom(4).hex()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"\0{name}")
    listener.listen()
    try:
        _, out, err = await shell(networked, (
            "python3 -c 'import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n"
            f"    s.connect(\"\\0{name}\"); print(\"connected\")\n"
            "except OSError as e:\n"
            "    print(type(e).__name__)'"
        ))
    finally:
        listener.close()
    assert out == "ConnectionRefusedError\n", err


async def test_no_corral_port_is_reachable(executor_factory: ExecutorFactory, netlab: NetLab) -> None:
    """Before: a networked step ran tasks through the executor's gRPC port on 127.0.0.1."""
    executor = await executor_factory(bwrap_warm_pool=0, sandbox_dns_upstream=netlab.dns_upstream)
    port = executor.executor.port
    targets = [("127.0.0.1", port)] + [(address, port) for address in plain_host_addresses()]
    _, outcome = await executor.run_steps(
        [{"tool": "shell", "command": f"python3 -c '{PROBE}' '{json.dumps(targets)}'"}], network=True
    )
    assert outcome.state == "TASK_STATE_COMPLETED", outcome.finished
    lines = outcome.step(0).stdout.splitlines()
    assert len(lines) == len(targets) and all(line.endswith(" ConnectionRefusedError") for line in lines), lines


async def test_a_tasks_rules_reach_its_sandbox(executor_factory: ExecutorFactory, netlab: NetLab) -> None:
    """TaskSpec.network_rules, through RunTask, is what the sandbox's resolver and rules hold."""
    executor = await executor_factory(bwrap_warm_pool=0, sandbox_dns_upstream=netlab.dns_upstream)
    task = spec(
        [{"tool": "python", "code": (
            "import socket\n"
            "for name in ('allowed.test', 'denied.test'):\n"
            "    try:\n"
            "        print(name, socket.gethostbyname(name))\n"
            "    except OSError:\n"
            "        print(name, 'unresolved')\n"
        )}],
        network=True,
    )
    task.network_rules.CopyFrom(NetworkRules.parse(allow=["allowed.test"]).to_proto())
    _, outcome = await executor.run(task)
    assert outcome.step(0).stdout == f"allowed.test {netlab.allowed}\ndenied.test unresolved\n", outcome.step(0).stderr


async def test_names_resolve_only_when_allowed_and_denied_ones_are_never_forwarded(
    driver: BubblewrapDriver, netlab: NetLab
) -> None:
    refusals: list[str] = []
    config = config_for(driver, NetworkRules.parse(allow=["allowed.test"]))
    asked_before = len(netlab.queries())  # the lab's log is the session's
    sandbox = await driver.create(dataclasses.replace(config, on_network_refused=refusals.append))
    try:
        code, out, err = await shell(sandbox, (
            "python3 - <<'EOF'\n"
            "import socket\n"
            "for name in ('allowed.test', 'denied.test', 'other.test'):\n"
            "    try:\n"
            "        print(name, sorted({a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET)}))\n"
            "    except socket.gaierror as e:\n"
            "        print(name, 'unresolved')\n"
            # A resolver of its own choosing (the lab's, by address) is refused: no way around ours.
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)\n"
            "try:\n"
            f"    s.connect(('{netlab.dns}', 53)); s.send(b'\\x12\\x34' + bytes(10))\n"
            "    s.recv(512); print('direct dns answered')\n"
            "except OSError as e:\n"
            "    print('direct dns', type(e).__name__)\n"
            "EOF"
        ))
        assert code == 0, err
        assert out.splitlines() == [
            f"allowed.test ['{netlab.allowed}']",
            "denied.test unresolved",
            "other.test unresolved",
            # Refused by the namespace's output rules: the datagram is never sent.
            "direct dns PermissionError",
        ]
        verdicts = await probe(sandbox, [(netlab.allowed, 80), (netlab.denied, 80), (netlab.other, 80)])
        assert verdicts == {
            (netlab.allowed, 80): "connected allowed.test",
            # Allowed by name only: an address nobody resolved for an allowed name is refused.
            (netlab.denied, 80): "ConnectionRefusedError",
            (netlab.other, 80): "ConnectionRefusedError",
        }
        status = await sandbox.network_status()
        assert status.refused_lookups >= 2 and {"denied.test", "other.test"} <= set(status.recent_refused_names)
        assert status.refused_connections >= 3
        assert "lookup of denied.test refused" in refusals
    finally:
        await sandbox.close()
    asked = netlab.queries()[asked_before:]
    assert "allowed.test" in asked
    assert "denied.test" not in asked and "other.test" not in asked


async def test_a_rule_change_applies_to_new_connections(driver: BubblewrapDriver, netlab: NetLab) -> None:
    sandbox = await driver.create(config_for(driver))
    try:
        targets = [(netlab.allowed, 80), (netlab.denied, 80), (netlab.private, 80)]
        assert await probe(sandbox, targets) == {
            (netlab.allowed, 80): "connected allowed.test",
            (netlab.denied, 80): "connected denied.test",
            # A private range stays closed by default.
            (netlab.private, 80): "ConnectionRefusedError",
        }
        await sandbox.update_network(NetworkRules.parse(allow=["10.213.0.0/24", netlab.allowed], deny=[netlab.denied]))
        assert await probe(sandbox, targets) == {
            (netlab.allowed, 80): "connected allowed.test",
            (netlab.denied, 80): "ConnectionRefusedError",
            (netlab.private, 80): "connected private.test",
        }
        assert (await sandbox.network_status()).rules.deny == [f"{netlab.denied}/32"]
    finally:
        await sandbox.close()


async def test_the_sandbox_cannot_change_its_own_rules(networked: Sandbox) -> None:
    _, out, err = await shell(networked, (
        "/usr/sbin/nft list ruleset; echo list=$?; /usr/sbin/nft flush ruleset; echo flush=$?; "
        "ip link set eth0 down 2>/dev/null; echo link=$?"
    ))
    assert "list=0" not in out and "flush=0" not in out and "link=0" not in out, (out, err)
    assert "Operation not permitted" in err
    verdicts = await probe(networked, [("169.254.169.254", 80)])
    assert verdicts == {("169.254.169.254", 80): "ConnectionRefusedError"}


async def test_pasta_holds_no_privilege_on_the_host(driver: BubblewrapDriver, networked: Sandbox) -> None:
    """pasta parses every packet the sandbox sends. Before, it ran as root in the host's user
    namespace with CAP_SYS_ADMIN kept: a sandbox that broke it got the host's root. Now it runs
    as its own unprivileged uid, in the user namespace owning the sandbox's network namespace."""
    if driver.pasta_as[0] is None:
        pytest.skip(f"pasta runs as root here: {driver.pasta_as[1]}")
    [pid] = own_pastas(driver)
    status = await asyncio.to_thread(Path(f"/proc/{pid}/status").read_text)
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert set(uids) == {str(driver.settings.sandbox_network_helper_uid)}, uids
    assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
    # The sandbox's steps (another uid, in a user namespace of their own) hold nothing over that
    # user namespace: the rules stay out of reach, and the network works.
    _, out, err = await shell(networked, "/usr/sbin/nft flush ruleset; echo flush=$?")
    assert "flush=0" not in out, (out, err)
    verdicts = await probe(networked, [("169.254.169.254", 80)])
    assert verdicts == {("169.254.169.254", 80): "ConnectionRefusedError"}


async def test_an_address_the_host_gains_after_the_sandbox_started_is_refused(
    driver: BubblewrapDriver, networked: Sandbox
) -> None:
    """A sandbox's own rules hold the host's addresses of when it started. Before, an address
    the host gained later (a new interface, a docker bridge) reached the host's listeners through
    pasta. Now the host's table refuses every connection pasta's uid makes to any host address."""
    if driver.pasta_as[0] is None:
        pytest.skip(f"pasta runs as root here: {driver.pasta_as[1]}")
    link, address = f"cguard{os.getpid() % 100000}", "198.51.100.77"  # not a private range
    netns.run_ip("link", "add", link, "type", "veth", "peer", "name", f"{link}p")  # no dummy module here
    try:
        netns.run_ip("addr", "add", f"{address}/32", "dev", link)
        netns.run_ip("link", "set", link, "up")
        async with Listener() as listener:
            verdicts = await probe(networked, [(address, listener.port)])
            # Refused on the host's side; pasta (2023) lets the sandbox's connect time out.
            assert verdicts[(address, listener.port)] in ("ConnectionRefusedError", "TimeoutError"), verdicts
            assert listener.accepted == 0
    finally:
        netns.run_ip("link", "del", link, check=False)


async def test_nothing_is_left_after_a_close_a_failed_start_or_a_cancelled_one(driver: BubblewrapDriver) -> None:
    assert own_namespaces(driver) == [] and own_pastas(driver) == []
    sandbox = await driver.create(config_for(driver))
    assert len(own_namespaces(driver)) == 1 and len(own_pastas(driver)) == 1
    await sandbox.close()
    assert own_namespaces(driver) == [] and own_pastas(driver) == [] and own_user_namespaces(driver) == []
    assert own_user_namespaces(driver) == []

    # bwrap fails after the network was made (its task directory is not there).
    broken = config_for(driver)
    shutil.rmtree(broken.host_task_dir)
    with pytest.raises(SandboxError):
        await driver.create(broken)
    assert own_namespaces(driver) == [] and own_pastas(driver) == []

    # Cancelled while its network is being made, then once it is made.
    for ready in (lambda: bool(own_namespaces(driver)), lambda: bool(own_pastas(driver))):
        start = asyncio.create_task(driver.create(config_for(driver)))
        for _ in range(20_000):  # bounded by the test's timeout; no assertion on time
            if ready() or start.done():
                break
            await asyncio.sleep(0.001)
        start.cancel()
        with pytest.raises(asyncio.CancelledError):
            created = await start
            await created.close()  # finished before the cancellation arrived: close it anyway
            raise asyncio.CancelledError
        assert own_namespaces(driver) == [] and own_pastas(driver) == []


async def test_an_executor_starting_again_removes_the_namespaces_it_left(tmp_path: Path, netlab: NetLab) -> None:
    """A crashed executor leaves its sandboxes' namespaces (and their pasta) behind; the next
    start with the same id removes them, and nobody else's."""
    settings = Settings(data_dir=tmp_path / "data", bwrap_warm_pool=0, sandbox_dns_upstream=netlab.dns_upstream)
    executor_id = f"test-{os.urandom(4).hex()}"
    first = BubblewrapDriver(settings)
    await first.start(executor_id)
    left = await first.create(config_for(first))
    try:
        assert len(own_namespaces(first)) == 1
        others = [name for name in netns.names() if not name.startswith(first.netns_prefix)]
        second = BubblewrapDriver(settings)
        await second.start(executor_id)
        assert own_namespaces(second) == []
        assert set(others) <= set(netns.names()), "another executor's (or the lab's) namespace went"
        # pasta quits once its namespace is deleted.
        for _ in range(2000):
            if not own_pastas(second):
                break
            await asyncio.sleep(0.005)
        assert own_pastas(second) == []
        await second.stop()
    finally:
        await left.close()
        await first.stop()


async def test_a_sandbox_without_network_has_only_loopback_and_refuses_rule_changes(driver: BubblewrapDriver) -> None:
    sandbox = await driver.create(config_for(driver, network=False))
    try:
        _, out, _ = await shell(sandbox, "python3 -c 'import socket; print([n for _, n in socket.if_nameindex()])'")
        assert out == "['lo']\n"
        with pytest.raises(FailedPrecondition, match="without network"):
            await sandbox.update_network(NetworkRules())
        assert not (await sandbox.network_status()).enabled
    finally:
        await sandbox.close()


async def test_network_fails_closed_when_pasta_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without pasta (or nft, or root) a sandbox asking for network fails saying what is
    missing, and the executor's status says so; it never gets the host's network instead."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("bwrap", "ip", "nft", "nsenter", "setpriv", "unshare", "python3"):
        found = shutil.which(tool)
        assert found is not None
        (tools / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(tools))
    settings = Settings(data_dir=tmp_path / "data", bwrap_warm_pool=0)
    driver = BubblewrapDriver(settings)
    await driver.start(f"test-{os.urandom(4).hex()}")
    try:
        assert "network: unavailable" in driver.limits_description
        assert "pasta not installed (apt-get install passt)" in driver.limits_description
        with pytest.raises(SandboxError, match="cannot give sandboxes network: pasta not installed"):
            await driver.create(config_for(driver))
    finally:
        await driver.stop()
    assert "the executor is not root" in bwrap_net.network_blocker(euid=1000)


def test_host_addresses_are_read_from_the_interfaces() -> None:
    addresses = netns.host_addresses()
    assert ipaddress.ip_address("127.0.0.1") in addresses
