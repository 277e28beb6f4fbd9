"""Several "hosts" on this machine: executors in network namespaces of their own, one address each.

`host_lab(tmp, hosts=N)` builds a bridge `chost0` at 10.215.0.1/24 in the root namespace (the
control host: scheduler, memory and gateway listen there) and, per host n = 1..N, a network
namespace `corral-host-n` joined to the bridge by the veth `chostn`, holding 10.215.0.(10+n).
`HostLab.start_executor(n)` runs an executor in host n's namespace only (nsenter --net: the
filesystem stays shared, as the executor's data directory is its own, `<tmp>/host-n`), listening
on and advertising its host's address, with a certificate naming just that address; the
scheduler's, memory's and gateway's certificates name 10.215.0.1. `lose(n)` is a host dying:
its link goes down, its veth is deleted (no FIN or RST reaches anyone), then its processes are
killed.

Names and addresses are fixed, so two runs on one machine take turns: an flock on
/run/corral-host-lab.lock, held while the lab exists; whoever holds it removes what a crashed
run left. Needs root, iproute2 and nsenter; the fixture skips otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import Cluster, Service, free_port, wait_for_grpc_health, wait_for_http

from corral.pki import CA, DEFAULT_HOSTS, ensure_deployment

NETWORK = "10.215.0.0/24"
CONTROL_ADDRESS = "10.215.0.1"
BRIDGE = "chost0"
EXECUTOR_PORT = 50053  # every host has its own network namespace: the same port on each
LOCK_PATH = Path("/run/corral-host-lab.lock")
LOCK_WAIT_SECONDS = 600
NAMESPACE_PREFIX = "corral-host-"


def host_address(n: int) -> str:
    return f"10.215.0.{10 + n}"


def namespace(n: int) -> str:
    return f"{NAMESPACE_PREFIX}{n}"


def veth(n: int) -> str:
    return f"chost{n}"


def unavailable() -> str:
    """Why the lab cannot be built here ("" when it can)."""
    if os.geteuid() != 0:
        return "the multi-host lab needs root (ip netns, veth, a bridge)"
    missing = [tool for tool in ("ip", "nsenter") if shutil.which(tool) is None]
    if missing:
        return f"the multi-host lab needs {', '.join(missing)} (iproute2, util-linux)"
    return ""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _kill_namespace_processes(name: str) -> None:
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _remove_leftovers() -> None:
    """Every namespace and link of the lab's names (ours, or a crashed run's: we hold the lock)."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(NAMESPACE_PREFIX):
            _kill_namespace_processes(name)
            _ip("netns", "del", name, check=False)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        link = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if link.startswith("chost") and link[5:].isdigit():
            _ip("link", "del", link, check=False)


def _network_in_use() -> list[str]:
    """Routes of this machine over the lab's network that are not the lab's bridge."""
    lab = ipaddress.ip_network(NETWORK)
    found = []
    for line in _ip("-4", "route", "show", check=False).stdout.splitlines():
        words = line.split()
        if not words or words[0] == "default" or f"dev {BRIDGE}" in line:
            continue
        with contextlib.suppress(ValueError):
            if ipaddress.ip_network(words[0], strict=False).overlaps(lab):
                found.append(line.strip())
    return found


@contextlib.contextmanager
def _lab_lock() -> Iterator[None]:
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another multi-host lab held {LOCK_PATH} for {LOCK_WAIT_SECONDS}s")
                time.sleep(0.5)
        yield
    finally:
        os.close(fd)


@dataclass
class HostLab:
    """The control host's services (`cluster`) and the executor hosts around it."""

    cluster: Cluster
    root: Path
    hosts: int
    executors: dict[int, Service] = field(default_factory=dict)
    lost: set[int] = field(default_factory=set)

    @staticmethod
    def executor_id(n: int) -> str:
        return f"host-{n}"

    def data_dir(self, n: int) -> Path:
        return self.root / f"host-{n}"

    def start_executor(self, n: int, wait: bool = True, **env: str) -> Service:
        """Host n's executor, in its namespace, with its own data directory and certificate;
        `wait`: until it serves (else see `wait_serving`)."""
        address = f"{host_address(n)}:{EXECUTOR_PORT}"
        issued = self.root / "issued" / f"host-{n}"
        if not (issued / "executor.crt").exists():
            CA.load(self.cluster.pki_dir).issue_into(issued, "executor", self.executor_id(n), [host_address(n)])
        data_dir = self.data_dir(n)
        data_dir.mkdir(exist_ok=True)
        data_dir.chmod(0o755)  # sandboxes run as an unprivileged host uid
        service = self.cluster.start(
            f"executor-{n}", "services.executor", address if wait else None,
            wrap=("nsenter", f"--net=/run/netns/{namespace(n)}", "--"),
            CORRAL_DATA_DIR=str(data_dir),
            CORRAL_EXECUTOR_ID=self.executor_id(n),
            CORRAL_EXECUTOR_ADDRESS=address,
            CORRAL_EXECUTOR_ADVERTISE_ADDRESS=address,
            CORRAL_TLS_CERT_FILE=str(issued / "executor.crt"),
            CORRAL_TLS_KEY_FILE=str(issued / "executor.key"),
            **env,
        )
        self.cluster.executor_ids[f"executor-{n}"] = self.executor_id(n)
        self.executors[n] = service
        return service

    def wait_serving(self, *hosts: int) -> None:
        """Waits for the executors of `hosts` to serve, over TLS to their host's address."""
        for n in hosts:
            service = self.executors[n]
            try:
                wait_for_grpc_health(
                    f"{host_address(n)}:{EXECUTOR_PORT}", self.cluster.credentials(), timeout=60, proc=service.proc
                )
            except Exception as exc:
                raise RuntimeError(f"{service.name} did not start: {exc}\n{service.log()[-3000:]}") from exc

    def stop_executor(self, n: int) -> None:
        self.executors.pop(n).stop()

    def lose(self, n: int) -> None:
        """Host n dies: cut off first (nothing it sends gets out), then its processes killed."""
        self.lost.add(n)
        _ip("link", "set", veth(n), "down")
        _ip("link", "del", veth(n))
        _kill_namespace_processes(namespace(n))
        service = self.executors.pop(n, None)
        if service is not None:  # and its sandboxes (own network namespaces, its process group)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.proc.pid, signal.SIGKILL)
            service.proc.wait(timeout=30)


@contextlib.contextmanager
def host_lab(root: Path, hosts: int, gateway: bool = False, executors: int = 0, **env: str) -> Iterator[HostLab]:
    """The lab with `hosts` executor hosts' namespaces, memory and the scheduler on the control
    host, the gateway if asked, and executors on hosts 1..`executors` (the others start none);
    all removed afterwards."""
    with _lab_lock():
        _remove_leftovers()
        in_use = _network_in_use()
        if in_use:
            pytest.fail(f"{NETWORK} is routed on this machine already ({in_use}): the lab would cut it off")
        root.chmod(0o755)
        cluster: Cluster | None = None
        try:
            _ip("link", "add", BRIDGE, "type", "bridge")
            _ip("addr", "add", f"{CONTROL_ADDRESS}/24", "dev", BRIDGE)
            _ip("link", "set", BRIDGE, "up")
            for n in range(1, hosts + 1):
                peer = f"{veth(n)}p"
                _ip("netns", "add", namespace(n))
                _ip("link", "add", veth(n), "type", "veth", "peer", "name", peer)
                _ip("link", "set", peer, "netns", namespace(n))
                _ip("link", "set", veth(n), "master", BRIDGE)
                _ip("link", "set", veth(n), "up")
                _ip("-n", namespace(n), "link", "set", "lo", "up")
                _ip("-n", namespace(n), "addr", "add", f"{host_address(n)}/24", "dev", peer)
                _ip("-n", namespace(n), "link", "set", peer, "up")
            pki_dir = root / "pki"
            # The control host's services are dialled at its lab address: their certificates say so.
            ensure_deployment(pki_dir, executor_id="executor", hosts=(*DEFAULT_HOSTS, CONTROL_ADDRESS))
            cluster = Cluster.new(
                root,
                CORRAL_TLS_DIR=str(pki_dir),
                CORRAL_SCHEDULER_ADDRESS=f"{CONTROL_ADDRESS}:{free_port()}",
                CORRAL_MEMORY_ADDRESS=f"{CONTROL_ADDRESS}:{free_port()}",
                # Not loopback-only any more: the embedded keyless mode must be chosen, not assumed.
                CORRAL_AUTH="off",
                # A killed host's filesystems would outlive it in the shared mount namespace; the
                # disk quota is not what is tested here.
                CORRAL_SANDBOX_DISK_FS="false",
                **env,
            )
            lab = HostLab(cluster=cluster, root=root, hosts=hosts)
            # Started together, waited for together: the machine is shared and slow to start them.
            memory = cluster.start("memory", "services.memory")
            scheduler = cluster.start("scheduler", "services.scheduler")
            started_gateway = cluster.start("gateway", "gateway") if gateway else None
            for n in range(1, executors + 1):  # they register once the scheduler answers
                lab.start_executor(n, wait=False)
            for service, address in ((memory, cluster.memory_address), (scheduler, cluster.scheduler_address)):
                wait_for_grpc_health(address, cluster.credentials(), timeout=60, proc=service.proc)
            lab.wait_serving(*range(1, executors + 1))
            if started_gateway is not None:
                wait_for_http(started_gateway, cluster.gateway_url + "/openapi.json", timeout=90)
            yield lab
        finally:
            if cluster is not None:
                for service in cluster.services.values():  # no graceful stop needed: all at once
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(service.proc.pid, signal.SIGKILL)
                cluster.stop()
            _remove_leftovers()
            _ip("link", "del", BRIDGE, check=False)
