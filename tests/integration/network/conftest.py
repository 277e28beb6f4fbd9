"""A whole Corral (memory, scheduler, a bubblewrap or docker executor, the REST gateway) whose
sandboxes' resolver asks the test lab's DNS (tests/netlab.py), and what its tests probe with.

Every test here runs once per driver (docker: marker `docker`, skipped saying why when no
engine or image is there). Nothing is sent beyond loopback, the host's own addresses and the
lab's (the metadata address is routed into the lab while the suite runs: a leak stays here).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import Cluster, require_docker, wait_for_http
from netlab import LAB_ADDRESS, NetLab, wait_for_port

DRIVERS = ["bubblewrap", pytest.param("docker", marks=pytest.mark.docker)]
METADATA = "169.254.169.254"
TERMINAL = {"completed", "failed", "cancelled"}
TASK_WAIT_SECONDS = 120.0


@dataclass
class Corral:
    cluster: Cluster
    api: httpx.Client
    driver: str
    lab: NetLab

    @property
    def corral_ports(self) -> list[tuple[str, int]]:
        """Every port a Corral service listens on (all on the host's loopback here)."""
        env = self.cluster.env
        addresses = [env["CORRAL_SCHEDULER_ADDRESS"], env["CORRAL_MEMORY_ADDRESS"], env["CORRAL_EXECUTOR_ADDRESS"]]
        ports = [(host, int(port)) for host, port in (a.rsplit(":", 1) for a in addresses)]
        return [*ports, ("127.0.0.1", int(env["CORRAL_GATEWAY_PORT"]))]

    def run(self, code: str, network: object = True, sandbox_id: str | None = None) -> dict[str, Any]:
        """Runs a python step (in its own sandbox, or in `sandbox_id`); the finished task."""
        body: dict[str, Any] = {"steps": [{"tool": "python", "code": PROBE + code, "timeout": 60}]}
        if sandbox_id is not None:
            body["sandbox_id"] = sandbox_id
        else:
            body["network"] = network
        created = self.api.post("/v1/tasks", json=body)
        assert created.status_code == 201, created.text
        task_id = created.json()["task_id"]
        deadline = time.monotonic() + TASK_WAIT_SECONDS
        while True:
            task: dict[str, Any] = self.api.get(f"/v1/tasks/{task_id}").json()
            if task["status"] in TERMINAL:
                return task
            assert time.monotonic() < deadline, f"task {task_id} did not end: {task}"
            time.sleep(0.2)

    def probe(self, code: str, network: object = True, sandbox_id: str | None = None) -> dict[str, Any]:
        """What the probe printed as JSON (its last line)."""
        task = self.run(code, network, sandbox_id)
        step = task["steps"][0]
        assert task["status"] == "completed", (task["error"], step["stdout"], step["stderr"], step["error"])
        result: dict[str, Any] = json.loads(step["stdout"].strip().splitlines()[-1])
        result["task_id"] = task["task_id"]
        return result

    def events(self, task_id: str) -> list[dict[str, Any]]:
        """The task's events as the SSE stream sends them (the stream ends with the task)."""
        found = []
        with self.api.stream("GET", f"/v1/tasks/{task_id}/events", timeout=60) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    found.append(json.loads(line.removeprefix("data:").strip()))
        return found


# Helpers every probe has: each returns a word (or the answer), never raises.
PROBE = r'''
import http.client, json, socket

def lookup(name):
    try:
        return sorted({a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)})
    except OSError as exc:
        return "refused: " + str(exc)

def connect(host, port):
    try:
        socket.create_connection((host, port), timeout=5).close()
        return "open"
    except OSError as exc:
        return "refused: " + str(exc)

def get(host):
    try:
        conn = http.client.HTTPConnection(host, 80, timeout=5)
        conn.request("GET", "/")
        return conn.getresponse().read().decode().strip()
    except OSError as exc:
        return "refused: " + str(exc)

'''


def refused(word: object) -> bool:
    return isinstance(word, str) and word.startswith("refused: ")


@pytest.fixture(scope="module", params=DRIVERS)
def corral(request: pytest.FixtureRequest, netlab: NetLab, host_listener: int) -> Iterator[Corral]:
    driver = str(request.param)
    if driver == "docker":
        require_docker()
    # Under /tmp, not pytest's root-only tmp tree: sandboxes run as an unprivileged host uid.
    data_dir = Path(tempfile.mkdtemp(prefix=f"corral-network-{driver}-"))
    data_dir.chmod(0o755)
    cluster = Cluster.new(data_dir, CORRAL_SANDBOX_DRIVER=driver, CORRAL_SANDBOX_DNS_UPSTREAM=netlab.dns_upstream)
    try:
        for name in ("memory", "scheduler", "executor"):
            getattr(cluster, f"start_{name}")()
        wait_for_http(cluster.start("gateway", "gateway"), cluster.gateway_url + "/openapi.json")
        with httpx.Client(base_url=cluster.gateway_url, timeout=60) as api:
            corral = Corral(cluster, api, driver, netlab)
            _refuse_a_host_network(corral, host_listener)
            yield corral
    finally:
        cluster.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _refuse_a_host_network(corral: Corral, listener: int) -> None:
    """Before any test looks a name up: a driver whose sandboxes reach the host (sharing its
    network, or through a bridge to it) would send the lab's names to the host's own resolver,
    beyond this machine. Connections to the host's loopback and own addresses only tell (and
    are the suite's first attack)."""
    targets = [*corral.corral_ports, ("127.0.0.1", listener), *[(a, listener) for a in host_addresses()]]
    found = corral.probe(f"print(json.dumps({{f'{{h}}:{{p}}': connect(h, p) for h, p in {targets!r}}}))")
    opened = sorted(target for target, word in found.items() if target != "task_id" and not refused(word))
    if opened:
        pytest.fail(
            f"a {corral.driver} sandbox with network reaches the host at {', '.join(opened)}: no test "
            "that looks names up runs against it"
        )


@pytest.fixture(scope="module")
def host_listener() -> Iterator[int]:
    """A port listening on every address of the host (0.0.0.0): what a database or any other
    service of the host looks like. Its backlog completes a handshake without accept()."""
    with socket.create_server(("0.0.0.0", 0), backlog=64) as server:
        yield server.getsockname()[1]


def host_addresses() -> list[str]:
    """The host's own IPv4 addresses (the lab's host side, docker's bridge, its interfaces)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    found = {line.split()[3].split("/")[0] for line in out.splitlines()}
    return sorted(a for a in found if not ipaddress.ip_address(a).is_loopback)


# A stand-in metadata service (socketserver's own bind: http.server's looks its name up).
METADATA_SERVER = f'''
import http.server, socketserver
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"metadata\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "metadata", 80
Server(("{METADATA}", 80), Handler).serve_forever()
'''


@pytest.fixture(scope="session")
def metadata_host(netlab: NetLab) -> Iterator[str]:
    """169.254.169.254 answering HTTP inside the lab, routed there from the host while the suite
    runs: a sandbox reaching it would get an answer (the host does, checked), and a leak would
    stay in the lab instead of reaching a real metadata service."""
    before = subprocess.run(["ip", "route", "show", f"{METADATA}/32"], capture_output=True, text=True).stdout.strip()
    subprocess.run(["ip", "-n", netlab.namespace, "addr", "add", f"{METADATA}/32", "dev", "lo"], check=True)
    subprocess.run(["ip", "route", "replace", f"{METADATA}/32", "via", LAB_ADDRESS], check=True)
    server = subprocess.Popen(
        ["ip", "netns", "exec", netlab.namespace, sys.executable, "-c", METADATA_SERVER],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(METADATA, 80)
        yield METADATA
    finally:
        server.kill()
        server.wait(timeout=10)
        subprocess.run(["ip", "route", "del", f"{METADATA}/32"], check=False)
        if before:
            with contextlib.suppress(subprocess.CalledProcessError):
                subprocess.run(["ip", "route", "add", *before.split()], check=True)
        subprocess.run(["ip", "-n", netlab.namespace, "addr", "del", f"{METADATA}/32", "dev", "lo"], check=False)
