"""Starting real Corral services as subprocesses for tests: free ports, health waits, cleanup."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from corral.config import Settings

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@functools.cache
def docker_unavailable() -> str:
    """Why the docker driver cannot be tested here ("" when it can)."""
    try:
        import docker
    except ImportError:
        return "the docker Python package is not installed"
    image = Settings().docker_image
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as exc:
        return f"no Docker engine is reachable ({exc}); start one with scripts/start-docker"
    try:
        client.images.get(image)
    except Exception:
        return f"the sandbox image {image} is missing; build it with scripts/build-images"
    return ""


def require_docker() -> None:
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)


def wait_for_grpc_health(address: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"service on {address} exited with {proc.returncode}")
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.1)
    raise TimeoutError(f"no healthy gRPC server on {address} after {timeout}s")


def wait_for_http(service: Service, url: str, timeout: float = 30.0) -> None:
    """Waits until `url` answers HTTP at all (healthy or not); fails with the service's log."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(f"{service.name} exited early:\n{service.log()[-3000:]}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{service.name} never answered:\n{service.log()[-3000:]}")


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Cluster:
    """Environment and handles for a set of services sharing one data directory."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)

    @classmethod
    def new(cls, data_dir: Path, **overrides: str) -> Cluster:
        env = dict(os.environ)
        env.update(
            CORRAL_DATA_DIR=str(data_dir),
            CORRAL_SCHEDULER_ADDRESS=f"127.0.0.1:{free_port()}",
            CORRAL_MEMORY_ADDRESS=f"127.0.0.1:{free_port()}",
            CORRAL_EXECUTOR_ADDRESS=f"127.0.0.1:{free_port()}",
            CORRAL_GATEWAY_PORT=str(free_port()),
            CORRAL_HEARTBEAT_INTERVAL_SECONDS="0.5",
            CORRAL_HEARTBEAT_TIMEOUT_SECONDS="3",
        )
        env.update(overrides)
        return cls(data_dir=data_dir, env=env)

    @property
    def scheduler_address(self) -> str:
        return self.env["CORRAL_SCHEDULER_ADDRESS"]

    @property
    def memory_address(self) -> str:
        return self.env["CORRAL_MEMORY_ADDRESS"]

    @property
    def executor_address(self) -> str:
        return self.env["CORRAL_EXECUTOR_ADDRESS"]

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.env['CORRAL_GATEWAY_PORT']}"

    def start(self, name: str, module: str, health_address: str | None = None, **env: str) -> Service:
        log_path = self.data_dir / f"{name}.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=REPO,
                env={**self.env, **env},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = Service(name, proc, log_path)
        self.services[name] = service
        if health_address is not None:
            try:
                wait_for_grpc_health(health_address, proc=proc)
            except Exception as exc:
                service.stop()
                raise RuntimeError(f"{name} did not start: {exc}\n{service.log()[-3000:]}") from exc
        return service

    def start_scheduler(self) -> Service:
        return self.start("scheduler", "services.scheduler", self.scheduler_address)

    def start_memory(self) -> Service:
        return self.start("memory", "services.memory", self.memory_address)

    def start_executor(self, name: str = "executor", **env: str) -> Service:
        address = env.get("CORRAL_EXECUTOR_ADDRESS", self.executor_address)
        return self.start(name, "services.executor", address, **env)

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def cluster(data_dir: Path, *names: str, **overrides: str) -> Iterator[Cluster]:
    """Starts the named services (memory, scheduler, executor) and stops them afterwards."""
    c = Cluster.new(data_dir, **overrides)
    try:
        for name in names:
            getattr(c, f"start_{name}")()
        yield c
    finally:
        c.stop()
