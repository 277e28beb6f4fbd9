"""`corral up`: the embedded deployment — every service as a local process, SQLite, bubblewrap.

Memory and scheduler start first; once their gRPC health says SERVING, the executor (which
registers with the scheduler) and the gateway start. Settings reach the children through
CORRAL_* environment variables, so each service reads them exactly as it would anywhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from corral.api_keys import address_host, is_loopback
from corral.config import Settings
from corral.grpc_server import channel
from corral.internal.v1 import registry_pb2, registry_pb2_grpc
from corral.pki import DEFAULT_HOSTS, PKIError, ensure_deployment
from corral.sdk._http import DEFAULT_URL
from corral.supervisor import ServiceSpec, StartupError, Supervisor

# Flags of `corral up` that map one to one onto Settings fields.
SETTING_FLAGS = {
    "data_dir": "directory for SQLite files, task directories and logs (CORRAL_DATA_DIR)",
    "scheduler_address": "host:port of the scheduler (CORRAL_SCHEDULER_ADDRESS)",
    "memory_address": "host:port of the memory service (CORRAL_MEMORY_ADDRESS)",
    "executor_address": "host:port of the executor (CORRAL_EXECUTOR_ADDRESS)",
    "gateway_host": "interface of the REST gateway (CORRAL_GATEWAY_HOST)",
    "gateway_port": "port of the REST gateway (CORRAL_GATEWAY_PORT)",
    "executor_capacity": "tasks the executor runs at once (CORRAL_EXECUTOR_CAPACITY)",
    "log_level": "debug, info, warning or error (CORRAL_LOG_LEVEL)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for name, help_text in SETTING_FLAGS.items():
        kind: type = int if name in {"gateway_port", "executor_capacity"} else str
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=help_text)
    parser.add_argument(
        "--quiet", action="store_true", help="do not echo service logs (they still go to files)"
    )
    parser.add_argument(
        "--start-timeout", type=float, default=60.0, help="seconds each service has to become ready"
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        name: getattr(args, name) for name in SETTING_FLAGS if getattr(args, name) is not None
    }
    settings = Settings(**overrides)
    settings.data_dir = settings.data_dir.expanduser().resolve()
    for name in METRICS_SETTINGS:
        if not getattr(settings, name):  # unset: a free loopback port (never beyond this host)
            setattr(settings, name, f"127.0.0.1:{free_loopback_port()}")
    return settings


# Each service's /metrics (corral.service_metrics), by service: on in `corral up`, on loopback.
METRICS_SETTINGS = {
    "scheduler_metrics_address": "scheduler", "executor_metrics_address": "executor",
    "memory_metrics_address": "memory",
}


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def child_environment(settings: Settings) -> dict[str, str]:
    """The supervisor's environment plus every setting `corral up` decided, as CORRAL_* vars."""
    env = dict(os.environ)
    for name in [*SETTING_FLAGS, *METRICS_SETTINGS]:
        env["CORRAL_" + name.upper()] = str(getattr(settings, name))
    # Every service finds its certificate (and the CA) in the one directory up made.
    env["CORRAL_TLS_DIR"] = str(settings.pki_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def ensure_pki(settings: Settings) -> None:
    """The deployment's CA and certificates, made on the first start and reused after. The
    executor's certificate names its id: CORRAL_EXECUTOR_ID, else host-port as before (two
    `corral up`s on one Docker engine must not share it: an executor removes the containers
    labelled with its id when it starts)."""
    hosts = [*DEFAULT_HOSTS, socket.gethostname()]
    for address in (settings.scheduler_address, settings.memory_address, settings.executor_address):
        host = dial_host(split_address(address)[0])
        if host not in hosts:
            hosts.append(host)
    executor_id = settings.executor_id or f"{socket.gethostname()}-{split_address(settings.executor_address)[1]}"
    if ensure_deployment(settings.pki_dir, executor_id, hosts):
        print(f"corral: created the deployment's CA and certificates in {settings.pki_dir}", file=sys.stderr)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def dial_host(host: str) -> str:
    """Where to reach a server bound to `host` (a wildcard address is reached on loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def port_problem(host: str, port: int) -> str | None:
    """Why `host:port` cannot be listened on, or None when it is free.

    Checked before starting anything: gRPC servers bind with SO_REUSEPORT, so a second
    scheduler on a port another gRPC server holds would start and silently share it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "address already in use"
            return exc.strerror or str(exc)
    return None


def grpc_ready(address: str, settings: Settings) -> Any:
    async def probe() -> bool:
        async with channel(address, settings, "admin") as chan:
            stub = health_pb2_grpc.HealthStub(chan)
            try:
                response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            except grpc.aio.AioRpcError:
                return False
            return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    return probe


def http_ready(url: str) -> Any:
    async def probe() -> bool:
        async with httpx.AsyncClient(timeout=1, trust_env=False) as client:
            try:
                response = await client.get(url)
            except httpx.HTTPError:
                return False
            return response.status_code == 200

    return probe


def gateway_url(settings: Settings) -> str:
    host = dial_host(settings.gateway_host)
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.gateway_port}"


async def wait_for_executor(settings: Settings, timeout: float) -> None:
    """Best effort: waits until the scheduler lists a live executor, so the first task runs at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with channel(settings.scheduler_address, settings, "admin") as chan:
        stub = registry_pb2_grpc.ExecutorRegistryServiceStub(chan)
        while loop.time() < deadline:
            try:
                response = await stub.ListExecutors(registry_pb2.ListExecutorsRequest(), timeout=2)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return
            else:
                if any(e.alive for e in response.executors):
                    return
            await asyncio.sleep(0.2)
    print("corral: warning: the executor has not registered with the scheduler yet", file=sys.stderr)


def service_specs(settings: Settings) -> list[list[ServiceSpec]]:
    """The start stages: each stage starts together once the previous one is ready."""
    env = child_environment(settings)
    python = sys.executable

    def grpc_service(name: str, module: str, address: str) -> ServiceSpec:
        host, port = split_address(address)
        return ServiceSpec(name, [python, "-m", module], grpc_ready(f"{dial_host(host)}:{port}", settings), env)

    return [
        [
            grpc_service("memory", "services.memory", settings.memory_address),
            grpc_service("scheduler", "services.scheduler", settings.scheduler_address),
        ],
        [
            grpc_service("executor", "services.executor", settings.executor_address),
            ServiceSpec(
                "gateway", [python, "-m", "gateway"], http_ready(gateway_url(settings) + "/healthz"), env
            ),
        ],
    ]


def preflight(settings: Settings) -> list[str]:
    """Problems that would stop a service from starting, named per service."""
    problems = []
    listeners = {
        "memory": settings.memory_address,
        "scheduler": settings.scheduler_address,
        "executor": settings.executor_address,
        "gateway": f"{settings.gateway_host}:{settings.gateway_port}",
    }
    for name, address in listeners.items():
        if address.startswith("unix:"):
            continue
        host, port = split_address(address)
        problem = port_problem(host, port)
        if problem:
            problems.append(f"{name} cannot listen on {address}: {problem}")
    if settings.auth == "auto":
        for name, host in (("gateway", settings.gateway_host), ("scheduler", address_host(settings.scheduler_address))):
            if not is_loopback(host):
                problems.append(
                    f"{name} would listen on {host} without API keys: set CORRAL_AUTH=keys (then "
                    "`corral keys create --admin --name admin --database`), or CORRAL_AUTH=off on purpose"
                )
    return problems


def auth_line(settings: Settings) -> str:
    if settings.auth == "keys":
        return ("  API keys       required: the first admin key is "
                "`corral keys create --admin --name admin --database`")
    if settings.auth == "off":
        return "  API keys       OFF (CORRAL_AUTH=off): anyone who reaches the gateway acts as tenant 'local'"
    return "  API keys       none (loopback only): you are the single tenant 'local'"


def banner(settings: Settings, log_dir: Path) -> str:
    url = gateway_url(settings)
    return "\n".join(
        [
            "",
            "Corral is up.",
            f"  REST gateway   {url}   (API docs: {url}/docs)",
            f"  scheduler      {settings.scheduler_address}   (gRPC)",
            f"  memory         {settings.memory_address}   (gRPC)",
            f"  executor       {settings.executor_address}   (gRPC, {settings.sandbox_driver} sandboxes)",
            f"  metrics        {url}/metrics (gateway)",
            "                 "
            + ", ".join(f"{service} http://{getattr(settings, name)}/metrics" for name, service in METRICS_SETTINGS.items()),
            f"  data           {settings.data_dir}",
            f"  logs           {log_dir}/<service>.log",
            auth_line(settings),
            "Try:  corral run 'echo hello from a sandbox'"
            + ("" if url == DEFAULT_URL else f" --url {url}"),  # the client commands' default
            "Press Ctrl-C to stop.",
            "",
        ]
    )


async def up(settings: Settings, quiet: bool, start_timeout: float) -> int:
    problems = preflight(settings)
    if problems:
        for problem in problems:
            print(f"corral: {problem}", file=sys.stderr)
        print("corral: nothing was started", file=sys.stderr)
        return 1

    log_dir = settings.data_dir / "logs"
    try:
        log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_dir.chmod(0o700)  # the services' logs are the operator's only
    except OSError as exc:
        print(f"corral: cannot use data directory {settings.data_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        ensure_pki(settings)
    except (PKIError, OSError) as exc:
        print(f"corral: cannot set up certificates in {settings.pki_dir}: {exc}", file=sys.stderr)
        return 1
    supervisor = Supervisor(log_dir, echo=None if quiet else sys.stdout, start_timeout=start_timeout)

    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_requested.set)

    async def until_stop_or(awaitable: Any) -> bool:
        """Runs `awaitable`; False when a stop signal came first."""
        work = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(stop_requested.wait())
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            return False
        work.result()  # re-raises StartupError
        return True

    exit_code = 0
    try:
        for stage in service_specs(settings):
            if not await until_stop_or(supervisor.start_stage(stage)):
                print("corral: interrupted while starting; stopping", file=sys.stderr)
                return 130
        await until_stop_or(wait_for_executor(settings, timeout=10))
        if not stop_requested.is_set():
            print(banner(settings, log_dir), flush=True)
            exited = asyncio.ensure_future(supervisor.wait_for_exit())
            stop = asyncio.ensure_future(stop_requested.wait())
            await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if exited.done():
                print(
                    f"corral: {exited.result().describe_exit()}\ncorral: stopping the other services",
                    file=sys.stderr,
                )
                exit_code = 1
            else:
                exited.cancel()
    except StartupError as exc:
        print(f"corral: {exc}", file=sys.stderr)
        print("corral: stopping the services already started", file=sys.stderr)
        exit_code = 1
    finally:
        print("corral: stopping...", file=sys.stderr, flush=True)
        await supervisor.stop_all()
        print("corral: stopped", file=sys.stderr, flush=True)
    return exit_code


def main(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"corral up: invalid setting: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(up(settings, quiet=args.quiet, start_timeout=args.start_timeout))
