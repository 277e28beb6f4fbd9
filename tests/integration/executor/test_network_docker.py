"""The docker driver's sandbox network, attacked from inside real containers (issue 10).

A networked container sits on Corral's bridge (corral-sandboxes) and the host's nftables table
`inet corral_docker` decides: the host (any of its addresses, its loopback listeners, the
executor's port), other sandboxes and 169.254.169.254 are refused at once; the test lab
(tests/netlab.py) stands in for the internet; DNS goes to the executor's resolver only, which
refuses denied names without forwarding them. Also run on gVisor (CORRAL_TEST_DOCKER_RUNTIME=runsc):
the table is the host's, so it holds for runsc's packets too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from netlab import NetLab

from corral.internal.v1 import executor_pb2
from corral.network_rules import NetworkRules
from services.executor.drivers.base import ProcessRequest, SandboxConfig, SandboxLimits
from services.executor.drivers.docker import DockerDriver
from services.executor.network import docker_net

from .conftest import DOCKER_RUNTIME, ExecutorClient, ExecutorFactory, make_settings, spec
from .test_docker import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

GATEWAY = "10.231.0.1"

# Run inside the sandbox: python3 - <<probe>> with a JSON list of checks on stdin's last line.
# Each check prints one JSON result: "open", "refused", "timeout" or the error's name.
PROBE = r'''
import json, socket, struct, sys

def tcp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((host, port))
        return "open"
    except ConnectionRefusedError:
        return "refused"
    except socket.timeout:
        return "timeout"
    except OSError as exc:
        return type(exc).__name__ + ":" + str(exc.errno)
    finally:
        s.close()

def http(host):
    try:
        s = socket.create_connection((host, 80), timeout=5)
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return type(exc).__name__
    s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    return data.split(b"\r\n\r\n", 1)[-1].decode().strip()

def dns(server, name, tcp_=False):
    q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
    try:
        if tcp_:
            s = socket.create_connection((server, 53), timeout=5)
            s.sendall(struct.pack("!H", len(q)) + q)
            size = struct.unpack("!H", s.recv(2))[0]
            r = s.recv(size)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(5)
            s.connect((server, 53))
            s.send(q)
            r = s.recv(4096)
    except ConnectionRefusedError:
        return "refused"
    except socket.timeout:
        return "timeout"
    except OSError as exc:
        # A UDP datagram rejected with ICMP admin-prohibited: EHOSTUNREACH.
        return "prohibited" if exc.errno == 113 else type(exc).__name__ + ":" + str(exc.errno)
    rcode = r[3] & 15
    answers = struct.unpack("!H", r[6:8])[0]
    addresses = []
    i = 12
    while r[i]:
        i += r[i] + 1
    i += 5
    for _ in range(answers):
        i += 2 if r[i] & 0xC0 == 0xC0 else r.index(b"\0", i) + 1 - i
        kind, _, _, size = struct.unpack("!HHIH", r[i:i + 10])
        i += 10
        if kind == 1:
            addresses.append(socket.inet_ntoa(r[i:i + size]))
        i += size
    return {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}.get(rcode, str(rcode)) + (
        " " + ",".join(addresses) if addresses else "")

for check in json.loads(sys.argv[1]):
    kind, *args = check
    print(json.dumps({"tcp": tcp, "http": http, "dns": dns, "dnstcp": lambda s, n: dns(s, n, True)}[kind](*args)))
'''


def probe_step(checks: list[list[Any]]) -> dict[str, Any]:
    command = f"python3 - '{json.dumps(checks)}' <<'PROBE'\n{PROBE}\nPROBE"
    return {"tool": "shell", "command": command, "timeout": 120}


def results(stdout: str) -> list[Any]:
    return [json.loads(line) for line in stdout.splitlines()]


@contextlib.contextmanager
def host_listener(host: str) -> Iterator[tuple[int, list[str]]]:
    """A TCP listener on the host; yields its port and the peers it accepted."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen()
    sock.settimeout(0.2)
    accepted: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                conn, peer = sock.accept()
                accepted.append(peer[0])
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def host_ipv4_addresses() -> list[str]:
    return [str(a) for a in docker_net.host_addresses() if a.version == 4]


@pytest.fixture
def sandbox_driver() -> str:
    from harness import require_docker

    require_docker()
    return "docker"


@pytest.fixture
async def lab_executor(executor_factory: ExecutorFactory, netlab: NetLab) -> ExecutorClient:
    executor = await executor_factory(sandbox_dns_upstream=netlab.dns_upstream)
    driver = executor.executor.runner.driver
    assert isinstance(driver, DockerDriver)
    if driver.network.blocker:
        pytest.fail(f"the docker driver cannot give sandboxes network here: {driver.network.blocker}")
    return executor


async def test_host_executor_and_metadata_are_refused_public_lab_answers(
    lab_executor: ExecutorClient, netlab: NetLab
) -> None:
    """Before (network_mode bridge), a step connected to every host listener bound to 0.0.0.0
    through its gateway, and to the executor's port; now each is refused and the lab answers."""
    executor_port = lab_executor.executor.port
    with host_listener("0.0.0.0") as (port, accepted), host_listener("127.0.0.1") as (loop_port, loop_accepted):
        host_targets = sorted({GATEWAY, netlab.host_address, *host_ipv4_addresses()} - {"127.0.0.1"})
        checks: list[list[Any]] = [["tcp", host, port] for host in host_targets]
        checks += [
            ["tcp", GATEWAY, executor_port],
            ["tcp", netlab.host_address, executor_port],
            ["tcp", "127.0.0.1", loop_port],  # the sandbox's own loopback, not the host's
            ["tcp", "169.254.169.254", 80],
            ["tcp", GATEWAY, 22],
            ["http", netlab.allowed],
            ["http", netlab.other],
            ["http", netlab.private],  # a private range: refused by default
        ]
        _, outcome = await lab_executor.run_steps([probe_step(checks)], network=True)
    assert outcome.state == "TASK_STATE_COMPLETED", outcome.finished
    found = results(outcome.step(0).stdout)
    n = len(host_targets)
    assert found[:n] == ["refused"] * n, list(zip(host_targets, found, strict=False))
    assert found[n:n + 5] == ["refused"] * 5, found
    assert found[n + 5:] == ["allowed.test", "other.test", "refused"], found
    assert accepted == [] and loop_accepted == []


async def test_another_sandbox_is_refused(lab_executor: ExecutorClient) -> None:
    """Two networked containers on one bridge: ICC is off and the subnet is refused, so one
    cannot connect to the other's listener (before: docker's bridge let them talk)."""
    victim_steps = [{"tool": "python", "timeout": 90, "code": (
        "import socket, os, time\n"
        "s = socket.socket(); s.bind(('0.0.0.0', 8080)); s.listen(); s.settimeout(0.2)\n"
        "ip = os.popen('ip -4 -o addr show eth0').read().split()[3].split('/')[0]\n"
        "open('address.tmp', 'w').write(ip); os.rename('address.tmp', 'address')\n"
        "got = 0\n"
        "while not os.path.exists('done'):\n"
        "    try:\n        s.accept()[0].close(); got += 1\n    except OSError:\n        pass\n"
        "print('accepted', got)\n"
    )}]
    attacker_steps = [{"tool": "shell", "timeout": 90, "command": (
        "for i in $(seq 300); do [ -s target ] && break; sleep 0.1; done; "
        "python3 -c \"import socket,sys\n"
        "s=socket.socket(); s.settimeout(5)\n"
        "try:\n s.connect((open('target').read(), 8080)); print('open')\n"
        "except ConnectionRefusedError: print('refused')\n"
        "except OSError as e: print(type(e).__name__)\""
    )}]
    victim_id, attacker_id = lab_executor.new_task_id(), lab_executor.new_task_id()
    victim = asyncio.create_task(lab_executor.run(spec(victim_steps, network=True), victim_id))
    attacker = asyncio.create_task(lab_executor.run(spec(attacker_steps, network=True), attacker_id))
    victim_dir, attacker_dir = lab_executor.host_task_dir(victim_id), lab_executor.host_task_dir(attacker_id)
    try:
        await wait_until(lambda: (victim_dir / "address").exists() and attacker_dir.exists(), "both sandboxes ran")
        address = (victim_dir / "address").read_text()
        assert address.startswith("10.231."), address
        (attacker_dir / "target.tmp").write_text(address)
        (attacker_dir / "target.tmp").rename(attacker_dir / "target")
        _, attacked = await asyncio.wait_for(attacker, 60)
    finally:
        with contextlib.suppress(OSError):
            (victim_dir / "done").write_text("")
    _, victim_outcome = await asyncio.wait_for(victim, 60)
    assert attacked.step(0).stdout == "refused\n", attacked.step(0)
    assert victim_outcome.step(0).stdout == "accepted 0\n", victim_outcome.step(0)


async def test_dns_answers_allowed_names_only_and_forwards_nothing_else(
    lab_executor: ExecutorClient, netlab: NetLab
) -> None:
    """With allow rules: allowed.test resolves (through the gateway, Docker's embedded resolver
    or libc) and connects; denied.test is REFUSED and never reaches the lab's DNS; the lab's
    resolver itself, and any address not resolved for an allowed name, are refused."""
    checks: list[list[Any]] = [
        ["dns", GATEWAY, "allowed.test"],
        ["dnstcp", GATEWAY, "allowed.test"],
        ["http", netlab.allowed],
        ["dns", GATEWAY, "denied.test"],
        ["dns", GATEWAY, "exfil-c2VjcmV0.denied.test"],
        ["dns", "127.0.0.11", "denied.test"],  # Docker's embedded resolver, where it exists
        ["dns", netlab.dns, "denied.test"],  # straight to a resolver: refused
        ["dnstcp", netlab.dns, "denied.test"],
        ["http", netlab.denied],  # allowed by no rule
        ["http", netlab.other],
    ]
    steps = [
        probe_step(checks),
        {"tool": "shell", "command": "cat /etc/resolv.conf; getent hosts allowed.test; getent hosts denied.test || echo unresolved"},
    ]
    task_spec = spec(steps, network=True)
    task_spec.network_rules.CopyFrom(NetworkRules.parse(allow=["allowed.test"], deny=["denied.test"]).to_proto())
    asked_before = len(netlab.queries())  # the lab's log is the session's
    _, outcome = await lab_executor.run(task_spec)
    assert outcome.state == "TASK_STATE_COMPLETED", outcome.finished
    found = results(outcome.step(0).stdout)
    assert found[:3] == [f"NOERROR {netlab.allowed}", f"NOERROR {netlab.allowed}", "allowed.test"], found
    assert found[3:5] == ["REFUSED", "REFUSED"], found
    # Docker's resolver is not listening on our network (resolv.conf is ours), or it forwards to ours.
    assert found[5] in ("refused", "timeout", "REFUSED"), found
    assert found[6:] == ["prohibited", "refused", "refused", "refused"], found
    allowed, unresolved = outcome.step(1).stdout.splitlines()[-2:]
    assert f"nameserver {GATEWAY}" in outcome.step(1).stdout
    assert allowed.split()[0] == netlab.allowed and unresolved == "unresolved", outcome.step(1).stdout
    queried = netlab.queries()[asked_before:]
    assert "allowed.test" in queried
    assert not [name for name in queried if name.endswith("denied.test")], queried


@pytest.fixture
async def docker_driver(tmp_path: Path, netlab: NetLab, sandbox_driver: str) -> AsyncIterator[DockerDriver]:
    import os

    settings = make_settings(
        tmp_path / "data", sandbox_driver="docker", docker_runtime=DOCKER_RUNTIME, sandbox_dns_upstream=netlab.dns_upstream
    )
    settings.tasks_dir.mkdir(parents=True)
    driver = DockerDriver(settings)
    await driver.start(f"executor-{os.urandom(4).hex()}")
    yield driver
    await driver.stop()


async def networked_sandbox(driver: DockerDriver, rules: NetworkRules) -> Any:
    task_dir = driver.settings.tasks_dir / f"t-{id(rules)}"
    driver.prepare_task_dir(task_dir)
    config = SandboxConfig(
        task_id=task_dir.name, host_task_dir=task_dir, limits=SandboxLimits.resolve(driver.settings),
        network=True, network_rules=rules,
    )
    return await driver.create(config)


async def run_probe(sandbox: Any, checks: list[list[Any]]) -> list[Any]:
    step = probe_step(checks)
    result = await sandbox.run(ProcessRequest(kind="shell", timeout=60, code=step["command"]), lambda s, t: None)
    assert result.exit_code == 0, result
    return results(result.stdout)


async def test_update_network_takes_effect_for_new_connections(docker_driver: DockerDriver, netlab: NetLab) -> None:
    sandbox = await networked_sandbox(docker_driver, NetworkRules.parse(allow=[f"{netlab.allowed}/32"]))
    try:
        checks: list[list[Any]] = [["http", netlab.allowed], ["http", netlab.other], ["dns", GATEWAY, "other.test"]]
        assert await run_probe(sandbox, checks) == ["allowed.test", "refused", "REFUSED"]
        await sandbox.update_network(NetworkRules.parse(allow=["other.test"]))
        assert await run_probe(sandbox, [["http", netlab.allowed], ["dns", GATEWAY, "other.test"], ["http", netlab.other]]) == [
            "refused", f"NOERROR {netlab.other}", "other.test"
        ]
        await sandbox.update_network(NetworkRules())  # the default policy: public destinations
        assert await run_probe(sandbox, [["http", netlab.allowed], ["http", netlab.private]]) == ["allowed.test", "refused"]
        status = await sandbox.network_status()
        assert status.enabled and status.refused_connections >= 3 and status.refused_lookups == 1, status
    finally:
        await sandbox.close()


async def test_the_sandbox_cannot_alter_its_rules(docker_driver: DockerDriver, netlab: NetLab) -> None:
    """The rules live in the host's namespace; from inside, changing the container's address
    (to pass as another source), raw sockets and netfilter netlink are all refused."""
    sandbox = await networked_sandbox(docker_driver, NetworkRules.parse(deny=[f"{netlab.other}/32"]))
    try:
        attack = (
            "ip addr add 10.231.255.77/16 dev eth0 2>&1 | head -1; "
            "ip route replace default via 10.231.0.1 dev eth0 src 10.231.255.77 2>&1 | head -1; "
            "python3 -c \"import socket\n"
            "for args in ((socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW), (socket.AF_NETLINK, socket.SOCK_RAW, 12)):\n"
            "  try:\n    s = socket.socket(*args); s.bind((0, 0)) if args[0] == socket.AF_NETLINK else None; "
            f"s.sendto(b'x' * 64, (0, 0)) if args[0] == socket.AF_NETLINK else s.sendto(b'x' * 40, ('{netlab.other}', 0)); print('sent')\n"
            "  except OSError as e: print(type(e).__name__)\""
        )
        result = await sandbox.run(ProcessRequest(kind="shell", timeout=60, code=attack), lambda s, t: None)
        lines = result.stdout.splitlines()
        # No CAP_NET_ADMIN / CAP_NET_RAW (runc: EPERM; gVisor: EACCES or its own errno).
        assert all(("not permitted" in line or "Permission denied" in line) for line in lines[:2]), result
        assert lines[2] != "sent", result  # a raw socket would spoof another source address
        # Netlink to netfilter may take the bytes: the kernel refuses the request itself, and
        # in any case the table is in the host's namespace, not the container's.
        assert await run_probe(sandbox, [["http", netlab.other], ["http", netlab.allowed]]) == ["refused", "allowed.test"]
    finally:
        await sandbox.close()
    assert "10.231.255.77" not in await asyncio.to_thread(_table_text)


async def test_stale_rules_of_a_crashed_run_are_removed_at_start(tmp_path: Path, netlab: NetLab, sandbox_driver: str) -> None:
    settings = make_settings(tmp_path / "data", sandbox_driver="docker", sandbox_dns_upstream=netlab.dns_upstream)
    settings.tasks_dir.mkdir(parents=True)
    executor_id = f"executor-{tmp_path.name[-8:]}"
    crashed = docker_net.DockerNetwork(settings, DockerDriver(settings).api)
    await crashed.start(executor_id)
    from services.executor.network.resolver import EgressStats

    egress = await crashed.attach("10.231.255.250", NetworkRules(), EgressStats())
    assert egress.names.chain in (await asyncio.to_thread(_table_text))
    assert crashed.dns is not None
    await crashed.dns.close()  # the process died: its resolver with it, its rules stayed
    again = docker_net.DockerNetwork(settings, crashed.api)
    await again.start(executor_id)
    try:
        text = await asyncio.to_thread(_table_text)
        assert egress.prefix not in text and "10.231.255.250" not in text
    finally:
        await again.stop()


def _table_text() -> str:
    return subprocess.run(
        ["nft", "list", "table", "inet", docker_net.TABLE], capture_output=True, text=True, check=True
    ).stdout


async def test_network_fails_closed_where_the_rules_cannot_be_enforced(executor_factory: ExecutorFactory) -> None:
    """An executor that cannot set up its filtered network (here: CORRAL_DOCKER_NETWORK names
    Docker's default bridge, where containers talk to each other and to the host) refuses
    networked tasks, saying why, and runs offline ones."""
    executor = await executor_factory(docker_network="bridge")
    _, networked = await executor.run_steps([{"tool": "shell", "command": "echo reached"}], network=True)
    assert networked.state == "TASK_STATE_FAILED", networked.finished
    message = networked.finished.error
    assert "cannot give sandboxes network" in message and "the docker network bridge exists with other settings" in message, message
    _, offline = await executor.run_steps([{"tool": "shell", "command": "echo offline"}])
    assert offline.step(0).stdout == "offline\n"
    status = await executor.stub.GetExecutorStatus(executor_pb2.GetExecutorStatusRequest())
    assert "sandboxes with network refused: the docker network bridge exists with other settings" in status.sandbox_limits
