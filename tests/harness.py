"""Starting real Corral services as subprocesses for tests: free ports, health waits, cleanup.

Each cluster has its own deployment CA (corral.pki, in <data_dir>/pki): its services talk TLS
with their role's certificate, and tests call them as the role they play (`Cluster.channel`).
"""

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
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from corral.config import Settings
from corral.grpc_server import CHANNEL_OPTIONS
from corral.pki import CA, ensure_deployment

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def executor_tls(pki_dir: Path, executor_id: str) -> dict[str, Path]:
    """Settings giving an executor a certificate for `executor_id` from the CA in `pki_dir`
    (made, with every role's certificate, if missing)."""
    ensure_deployment(pki_dir, executor_id="executor")
    directory = pki_dir.parent / "issued" / f"executor-{executor_id}"
    if not (directory / "executor.crt").exists():
        CA.load(pki_dir).issue_into(directory, "executor", executor_id)
    return {
        "tls_dir": pki_dir,
        "tls_cert_file": directory / "executor.crt",
        "tls_key_file": directory / "executor.key",
    }


def executor_tls_env(pki_dir: Path, executor_id: str) -> dict[str, str]:
    """executor_tls as CORRAL_* variables, for an executor started as a process."""
    return {f"CORRAL_{name.upper()}": str(value) for name, value in executor_tls(pki_dir, executor_id).items()}


def scheduler_channel(pki_dir: Path, address: str) -> grpc.aio.Channel:
    """A channel calling as the scheduler of the CA in `pki_dir` (an executor's only caller)."""
    from corral.grpc_server import channel

    return channel(address, Settings(tls_dir=pki_dir), "scheduler")


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


def wait_for_grpc_health(
    address: str, credentials: grpc.ChannelCredentials, timeout: float = 30.0,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Waits for SERVING over TLS (any certificate from the CA may ask)."""
    deadline = time.monotonic() + timeout
    with grpc.secure_channel(address, credentials) as channel:
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
    executor_ids: dict[str, str] = field(default_factory=dict)  # service name -> executor id

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
        env.setdefault("CORRAL_TLS_DIR", str(data_dir / "pki"))
        # Where the CLI and the SDK in a child process find this cluster's gateway.
        env.setdefault("CORRAL_URL", f"http://127.0.0.1:{env['CORRAL_GATEWAY_PORT']}")
        ensure_deployment(Path(env["CORRAL_TLS_DIR"]), executor_id="executor")
        return cls(data_dir=data_dir, env=env)

    @property
    def pki_dir(self) -> Path:
        return Path(self.env["CORRAL_TLS_DIR"])

    @property
    def ca_cert(self) -> bytes:
        return (self.pki_dir / "ca.crt").read_bytes()

    def issue(self, role: str, name: str | None = None) -> Path:
        """A directory holding a certificate for `role`/`name` from this cluster's CA (with the
        role's standard file names, as CORRAL_TLS_DIR expects)."""
        name = name or role
        directory = self.data_dir / "issued" / f"{role}-{name}"
        if not (directory / f"{role}.crt").exists():
            CA.load(self.pki_dir).issue_into(directory, role, name)
        return directory

    def settings(self, **overrides: object) -> Settings:
        """Settings of this cluster (its addresses and certificates), as a client would have."""
        return Settings(
            data_dir=self.data_dir,
            tls_dir=self.pki_dir,
            scheduler_address=self.scheduler_address,
            memory_address=self.memory_address,
            **overrides,  # type: ignore[arg-type]
        )

    def credentials(self, role: str = "admin", name: str | None = None) -> grpc.ChannelCredentials:
        """TLS as `role` (the cluster's own certificate for it; another `name` is issued)."""
        directory = self.pki_dir if name is None else self.issue(role, name)
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_cert,
            private_key=(directory / f"{role}.key").read_bytes(),
            certificate_chain=(directory / f"{role}.crt").read_bytes(),
        )

    def channel(self, address: str, role: str = "admin", name: str | None = None) -> grpc.Channel:
        """A blocking channel to one of the cluster's servers, calling as `role`."""
        return grpc.secure_channel(address, self.credentials(role, name), options=CHANNEL_OPTIONS)

    def aio_channel(self, address: str, role: str = "admin", name: str | None = None) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(address, self.credentials(role, name), options=CHANNEL_OPTIONS)

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

    def start(
        self, name: str, module: str, health_address: str | None = None, wrap: tuple[str, ...] = (), **env: str
    ) -> Service:
        """`wrap` goes before the command (e.g. nsenter into another network namespace)."""
        log_path = self.data_dir / f"{name}.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(
                [*wrap, sys.executable, "-m", module],
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
                wait_for_grpc_health(health_address, self.credentials(), proc=proc)
            except Exception as exc:
                service.stop()
                raise RuntimeError(f"{name} did not start: {exc}\n{service.log()[-3000:]}") from exc
        return service

    def start_scheduler(self) -> Service:
        return self.start("scheduler", "services.scheduler", self.scheduler_address)

    def start_memory(self) -> Service:
        return self.start("memory", "services.memory", self.memory_address)

    def start_executor(self, name: str = "executor", **env: str) -> Service:
        """An executor whose certificate names CORRAL_EXECUTOR_ID if given, else `name-port`
        (unique: a docker executor removes the containers labelled with its id when it starts).
        Any but the one named "executor" gets a data directory of its own beside the cluster's."""
        address = env.get("CORRAL_EXECUTOR_ADDRESS", self.executor_address)
        executor_id = env.get("CORRAL_EXECUTOR_ID") or f"{name}-{address.rsplit(':', 1)[1]}"
        directory = self.issue("executor", executor_id)
        env.setdefault("CORRAL_TLS_CERT_FILE", str(directory / "executor.crt"))
        env.setdefault("CORRAL_TLS_KEY_FILE", str(directory / "executor.key"))
        if name != "executor" and "CORRAL_DATA_DIR" not in env:
            # Each executor its own data directory (an executor refuses one another holds); a
            # sibling, not a child: an executor's start releases what it finds mounted below its own.
            own = self.data_dir.with_name(f"{self.data_dir.name}-{name}")
            own.mkdir(exist_ok=True)
            own.chmod(self.data_dir.stat().st_mode & 0o777)
            env["CORRAL_DATA_DIR"] = str(own)
        self.executor_ids[name] = executor_id
        return self.start(name, "services.executor", address, **env)

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.proc.pid, signal.SIGKILL)


class MemoryAsItsCallers:
    """MemoryService as the roles that may call it: writes (AppendEvents, PutNote) as an
    executor, reads as the gateway -- one object, so tests read like a single stub."""

    WRITES = ("AppendEvents", "PutNote")

    def __init__(self, system: Cluster) -> None:
        from corral.v1 import memory_pb2_grpc

        self.channels = [system.aio_channel(system.memory_address, role) for role in ("executor", "gateway")]
        writer, reader = (memory_pb2_grpc.MemoryServiceStub(c) for c in self.channels)
        for name in ("AppendEvents", "PutNote", "ListEvents", "Search", "GetNote", "ListNotes"):
            setattr(self, name, getattr(writer if name in self.WRITES else reader, name))

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    def __getattr__(self, name: str) -> Any:  # the RPCs, set in __init__ (for type checkers)
        raise AttributeError(name)


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
