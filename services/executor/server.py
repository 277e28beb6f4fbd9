"""The executor process: gRPC server, sandbox driver, scheduler registration, history."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
import structlog

from corral.config import Settings
from corral.grpc_server import (
    add_reflection_and_health,
    bind,
    mark_serving,
    new_server,
    run_until_signalled,
)
from corral.internal.v1 import executor_pb2, executor_pb2_grpc, sandbox_relay_pb2_grpc
from corral.pki import PKIError, certified_executor_id
from corral.retention import start_sweeping, stop_sweeping
from corral.service_metrics import serve_metrics
from services.executor.data_dir_lock import DataDirInUse, DataDirLock, lock_data_dir
from services.executor.drivers.base import SandboxDriver, SandboxError
from services.executor.history import HistoryRecorder
from services.executor.registration import SchedulerRegistration
from services.executor.relay import SERVICE_NAME as RELAY_SERVICE_NAME
from services.executor.relay import SandboxRelayServicer
from services.executor.retention import sweep as sweep_task_dirs
from services.executor.runner import TaskRunner
from services.executor.servicer import ExecutorServicer
from services.executor.task_fs import TaskFilesystems

log = structlog.get_logger()

SERVICE_NAME = executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"].full_name


def make_driver(settings: Settings) -> SandboxDriver:
    try:
        if settings.sandbox_driver == "bubblewrap":
            from services.executor.drivers.bubblewrap import BubblewrapDriver

            return BubblewrapDriver(settings)
        if settings.sandbox_driver == "docker":
            from services.executor.drivers.docker import DockerDriver

            return DockerDriver(settings)
    except SandboxError as exc:
        # A missing tool or library (bwrap, libseccomp, the image): said as such, no traceback.
        raise SystemExit(f"the {settings.sandbox_driver} sandbox driver cannot start: {exc}") from None
    raise SystemExit(f"unknown sandbox driver {settings.sandbox_driver!r} (available: bubblewrap, docker)")


def start_task_fs(settings: Settings, driver: SandboxDriver) -> None:
    """Decides whether sandboxes get filesystems of their own, and says so (never silently)."""
    task_fs = TaskFilesystems(settings, driver.disk_fs_blocker())
    driver.task_fs = task_fs  # the driver's start() releases what a crashed run left
    if task_fs.enabled:
        log.info(task_fs.description)
    else:
        log.warning(task_fs.description)


def stop_task_fs(driver: SandboxDriver) -> None:
    if driver.task_fs is not None:
        driver.task_fs.stop()


WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})


def advertised_address(settings: Settings, host: str, port: int) -> str:
    """The address the scheduler and the gateway dial to reach this executor: the setting, else
    the one it listens on (which, all interfaces, only works from this very machine)."""
    configured = settings.executor_advertise_address
    if configured:
        advertised_host, _, advertised_port = configured.rpartition(":")
        if not advertised_host or not advertised_port.isdigit():
            raise SystemExit(
                f"executor: CORRAL_EXECUTOR_ADVERTISE_ADDRESS {configured!r} is not host:port "
                "(the address the scheduler and the gateway dial, e.g. 10.0.0.7:50053)"
            )
        return configured
    if host in WILDCARD_HOSTS:
        log.warning(
            "advertising an all-interfaces address: only a scheduler and gateway on this machine "
            "can dial it; set CORRAL_EXECUTOR_ADVERTISE_ADDRESS to this host's own address",
            address=f"{host}:{port}",
        )
    return f"{host}:{port}"


@dataclass
class RunningExecutor:
    server: grpc.aio.Server
    port: int
    runner: TaskRunner
    history: HistoryRecorder
    registration: SchedulerRegistration
    data_dir_lock: DataDirLock
    retention: asyncio.Task[None] | None = None

    @property
    def executor_id(self) -> str:
        return self.runner.executor_id

    async def stop(self, grace: float = 5.0) -> None:
        """Cancels running tasks (killing their sandboxes), then stops serving."""
        await stop_sweeping(self.retention)
        await self.registration.stop()
        await self.runner.shutdown()
        await self.runner.sandboxes.stop()
        await self.runner.driver.stop()
        stop_task_fs(self.runner.driver)
        await self.server.stop(grace)
        await self.history.close()
        self.data_dir_lock.release()


async def start_executor(settings: Settings) -> RunningExecutor:
    """Builds and starts the executor; serve() and the tests both use this."""
    try:
        # Before anything else reads the data directory: its leftovers are ours to clean up.
        data_dir_lock = lock_data_dir(settings.data_dir)
    except DataDirInUse as exc:
        raise SystemExit(f"executor: {exc}") from None
    try:
        return await _start_executor(settings, data_dir_lock)
    except BaseException:
        data_dir_lock.release()
        raise


async def _start_executor(settings: Settings, data_dir_lock: DataDirLock) -> RunningExecutor:
    driver = make_driver(settings)
    settings.tasks_dir.mkdir(parents=True, exist_ok=True)
    server = new_server()
    port = bind(server, settings.executor_address, settings, "executor")
    host = settings.executor_address.rsplit(":", 1)[0]
    try:
        # The scheduler accepts this executor only under the id its certificate names.
        executor_id = certified_executor_id(settings)
    except PKIError as exc:
        raise SystemExit(f"executor: {exc}") from exc
    advertise = advertised_address(settings, host, port)

    # Before serving: the driver cleans up what a crashed run left.
    start_task_fs(settings, driver)
    await driver.start(executor_id)
    history = HistoryRecorder(settings, executor_id)
    history.start()  # delivers what an earlier run spooled
    runner = TaskRunner(settings, driver, executor_id, history)
    runner.sandboxes.start()  # the reaper of expired long-lived sandboxes
    executor_pb2_grpc.add_ExecutorServiceServicer_to_server(ExecutorServicer(runner), server)
    sandbox_relay_pb2_grpc.add_SandboxRelayServiceServicer_to_server(SandboxRelayServicer(runner.sandboxes), server)
    health = add_reflection_and_health(server, [SERVICE_NAME, RELAY_SERVICE_NAME])
    await server.start()
    await mark_serving(health, [SERVICE_NAME, RELAY_SERVICE_NAME])

    registration = SchedulerRegistration(
        settings,
        executor_id,
        advertise,
        settings.executor_capacity,
        driver.name,
        settings.heartbeat_interval_seconds,
        runner.sandboxes,
        runner.held_tasks,
        runner.drop,
        runner.learn_leader,
    )
    registration.start()
    log.info(
        "executor serving",
        address=f"{host}:{port}",
        executor_id=executor_id,
        driver=driver.name,
        capacity=settings.executor_capacity,
        tasks_dir=str(settings.tasks_dir),
    )
    retention = start_sweeping("executor", settings, lambda: sweep_task_dirs(settings, lambda: runner.running_task_ids))
    return RunningExecutor(server, port, runner, history, registration, data_dir_lock, retention)


async def serve(settings: Settings) -> None:
    executor = await start_executor(settings)
    metrics = serve_metrics(settings.executor_metrics_address, "CORRAL_EXECUTOR_METRICS_ADDRESS")
    if metrics is not None:
        log.info("metrics listening", address=metrics.address, path="/metrics")

    async def on_stop() -> None:
        await stop_sweeping(executor.retention)
        await executor.registration.stop()
        await executor.runner.shutdown()
        await executor.runner.sandboxes.stop()
        await executor.runner.driver.stop()
        stop_task_fs(executor.runner.driver)

    try:
        await run_until_signalled(executor.server, on_stop=on_stop)
        await executor.history.close()
    finally:
        executor.data_dir_lock.release()
        if metrics is not None:
            metrics.close()
