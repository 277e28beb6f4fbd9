"""Helpers for the CLI tests: free ports, process trees, and a real `corral up` to talk to."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import free_port

REPO = Path(__file__).resolve().parents[3]
SERVICE_MAINS = [
    REPO / "services" / "scheduler" / "__main__.py",
    REPO / "services" / "memory" / "__main__.py",
    REPO / "services" / "executor" / "__main__.py",
    REPO / "gateway" / "__main__.py",
]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def process_tree(root: int) -> list[tuple[int, str]]:
    """(pid, start time) of every live descendant of `root`."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            children.setdefault(int(fields[1]), []).append((int(entry), fields[19]))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child[0])
    return found


def still_alive(pid: int, start_time: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] == start_time and fields[0] != "Z"


def corral_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "corral.cli", *args]


def services_missing() -> list[str]:
    return [str(p.relative_to(REPO)) for p in SERVICE_MAINS if not p.exists()]


@dataclass
class CorralUp:
    """A running `corral up` on private ports with a temporary data directory."""

    process: subprocess.Popen[str]
    data_dir: Path
    scheduler: str
    memory: str
    executor: str
    gateway_port: int
    output: list[str] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def ports(self) -> list[int]:
        return [
            int(a.rsplit(":", 1)[1]) for a in (self.scheduler, self.memory, self.executor)
        ] + [self.gateway_port]

    def text(self) -> str:
        return "".join(self.output)


def start_corral_up(data_dir: Path, timeout: float = 120.0) -> CorralUp:
    ports = [free_port() for _ in range(4)]
    scheduler, memory, executor = (f"127.0.0.1:{p}" for p in ports[:3])
    process = subprocess.Popen(
        corral_command(
            "up", "--data-dir", str(data_dir),
            "--scheduler-address", scheduler, "--memory-address", memory,
            "--executor-address", executor, "--gateway-port", str(ports[3]),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    up = CorralUp(process, data_dir, scheduler, memory, executor, ports[3])
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            up.output.append(line)
            if "Corral is up." in line:
                ready.set()
        ready.set()  # EOF: it exited

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.2):
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("corral up was not ready in time:\n" + up.text())
    if process.poll() is not None or "Corral is up." not in up.text():
        raise AssertionError(f"corral up failed (exit {process.poll()}):\n" + up.text())
    return up


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
