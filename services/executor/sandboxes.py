"""Long-lived sandboxes on this executor: created on request, used by one task at a time,
removed on request or when their time is up (by this executor, whatever the scheduler does).

The sandbox's host directory `sandboxes/{id}/tasks` is its /tasks; each task run in it gets
/tasks/{task_id}. Its run directory holds the desktop's and Jupyter's unix sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from corral.config import Settings
from corral.errors import CapacityExhausted, SandboxNotFound
from corral.network_rules import NetworkRules
from corral.service_metrics import SANDBOX_STARTS
from corral.v1 import sandbox_pb2, task_pb2
from services.executor import task_fs
from services.executor.desktop import Desktop, start_desktop, start_jupyter
from services.executor.disk_quota import measure, over_quota
from services.executor.drivers.base import (
    MIB,
    WORKSPACE_DIR,
    WORKSPACE_NAME,
    NetworkRefusedCallback,
    Sandbox,
    SandboxConfig,
    SandboxDriver,
    SandboxError,
    SandboxLimits,
)
from services.executor.errors import SandboxExists, SandboxStartFailed
from services.executor.network.status import NetworkStatus, NetworkTally

log = structlog.get_logger()

REAP_INTERVAL_SECONDS = 1.0


@dataclass
class ManagedSandbox:
    sandbox_id: str
    spec: sandbox_pb2.SandboxSpec
    sandbox: Sandbox
    host_tasks_dir: Path
    host_run_dir: Path
    expires_at: float  # wall-clock seconds
    desktop: Desktop | None = None
    # host_tasks_dir is a filesystem of its own (task_fs.py), released when the sandbox goes.
    own_fs: bool = False
    # One task at a time.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    jupyter_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The running task's, told of what the network refuses (none between tasks).
    on_network_refused: NetworkRefusedCallback | None = None

    @property
    def step_env(self) -> dict[str, str]:
        return {"DISPLAY": self.desktop.display} if self.desktop else {}


class _RefusalRelay:
    """The sandbox's on_network_refused, fixed at its creation, passing each refusal on to
    whichever task runs in it then (the sandbox's counters keep them all anyway)."""

    def __init__(self) -> None:
        self.managed: ManagedSandbox | None = None

    def __call__(self, description: str) -> None:
        listener = self.managed.on_network_refused if self.managed is not None else None
        if listener is not None:
            listener(description)


class SandboxManager:
    def __init__(self, settings: Settings, driver: SandboxDriver) -> None:
        self.settings = settings
        self.driver = driver
        self._sandboxes: dict[str, ManagedSandbox] = {}
        self._creating: set[str] = set()
        # Why sandboxes were removed by this executor itself (a task naming one is told).
        self.removed_reasons: dict[str, str] = {}
        self._reaper: asyncio.Task[None] | None = None
        # Refused connections and lookups of every sandbox with network here (tasks' too).
        self.network = NetworkTally()
        # Called with a sandbox's id once it is removed (what others keep for it goes too).
        self.on_removed: list[Callable[[str], None]] = []

    @property
    def max_sandboxes(self) -> int:
        return self.settings.executor_max_sandboxes or self.settings.executor_capacity

    @property
    def sandbox_ids(self) -> list[str]:
        return sorted(self._sandboxes)

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_loop(), name="sandbox-reaper")

    async def stop(self) -> None:
        if self._reaper is not None:
            # Cancelled again until it ends (as WarmPool.stop): one CI run saw the reaper stay
            # "cancelling" in its sleep for ever after a single cancel(), hanging the stop.
            while not self._reaper.done():
                self._reaper.cancel()
                await asyncio.wait({self._reaper}, timeout=1.0)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                self._reaper.result()
            self._reaper = None
        for sandbox_id in list(self._sandboxes):
            await self.delete(sandbox_id, "the executor is stopping")

    def get(self, sandbox_id: str) -> ManagedSandbox:
        managed = self._sandboxes.get(sandbox_id)
        if managed is None:
            raise SandboxNotFound(f"no sandbox {sandbox_id!r} on this executor")
        return managed

    async def create(
        self, sandbox_id: str, spec: sandbox_pb2.SandboxSpec, expires_at: float
    ) -> ManagedSandbox:
        if sandbox_id in self._sandboxes or sandbox_id in self._creating:
            raise SandboxExists(f"sandbox {sandbox_id} already exists here")
        most = self.max_sandboxes
        if len(self._sandboxes) + len(self._creating) >= most:
            # The scheduler places within this too; a create past it starves the tasks here.
            raise CapacityExhausted(
                f"this executor holds {most} long-lived sandboxes, the most it may "
                "(CORRAL_EXECUTOR_MAX_SANDBOXES)",
                retry_after=10,
            )
        self._creating.add(sandbox_id)
        try:
            host_tasks_dir = self.settings.data_dir / "sandboxes" / sandbox_id / "tasks"
            host_run_dir = self.settings.run_dir_root / sandbox_id
            limits = SandboxLimits.resolve(self.settings, spec.limits)
            filesystems = self.driver.task_fs
            own_fs = filesystems is not None and await asyncio.to_thread(
                filesystems.attach, host_tasks_dir, limits.disk_mb
            )
            self.driver.prepare_task_dir(host_tasks_dir)
            # The workspace: made here, before the sandbox exists (its mount source is never
            # a path the sandbox has had a chance to replace).
            workspace = host_tasks_dir / WORKSPACE_NAME
            with contextlib.suppress(FileExistsError):
                workspace.mkdir(mode=0o700)
            self.driver.prepare_task_dir(workspace)
            self.driver.prepare_run_dir(host_run_dir)
            relay = _RefusalRelay()
            config = SandboxConfig(
                task_id=sandbox_id,
                host_task_dir=host_tasks_dir,
                limits=limits,
                network=spec.network,
                network_rules=NetworkRules.from_proto(spec.network_rules),
                on_network_refused=relay if spec.network else None,
                env=dict(spec.env),
                desktop=spec.desktop,
                host_run_dir=host_run_dir,
                shared_tasks=True,
                workspace=True,
            )
            try:
                sandbox = await self.driver.create(config)
                SANDBOX_STARTS.labels(self.driver.name, "long_lived").inc()
            except BaseException:
                if own_fs:
                    await asyncio.to_thread(task_fs.release, host_tasks_dir)
                raise
            managed = ManagedSandbox(
                sandbox_id, spec, sandbox, host_tasks_dir, host_run_dir, expires_at, own_fs=own_fs
            )
            relay.managed = managed
            if spec.network:
                self.network.track(sandbox)
            if spec.desktop:
                try:
                    managed.desktop = await start_desktop(sandbox, host_run_dir)
                except BaseException:
                    await sandbox.close()
                    if own_fs:
                        await asyncio.to_thread(task_fs.release, host_tasks_dir)
                    raise
            self._sandboxes[sandbox_id] = managed
            log.info("sandbox created", sandbox_id=sandbox_id, desktop=spec.desktop)
            return managed
        except SandboxError as exc:
            raise SandboxStartFailed(str(exc)) from exc
        finally:
            self._creating.discard(sandbox_id)

    def extend(self, sandbox_id: str, expires_at: float) -> None:
        self.get(sandbox_id).expires_at = expires_at

    async def delete(self, sandbox_id: str, reason: str = "deleted") -> bool:
        managed = self._sandboxes.pop(sandbox_id, None)
        if managed is None:
            return False
        await self.network.retire(managed.sandbox)
        with contextlib.suppress(Exception):
            await managed.sandbox.close()
        shutil.rmtree(managed.host_run_dir, ignore_errors=True)
        if managed.own_fs:
            await asyncio.to_thread(task_fs.release, managed.host_tasks_dir)
        for forget in self.on_removed:
            forget(sandbox_id)
        log.info("sandbox removed", sandbox_id=sandbox_id, reason=reason)
        return True

    async def update_network(self, sandbox_id: str, asked: task_pb2.NetworkRules) -> NetworkStatus:
        """Replaces the sandbox's rules (the driver raises FailedPrecondition when it cannot)."""
        managed = self.get(sandbox_id)
        rules = NetworkRules.from_proto(asked)  # InvalidArgument naming a bad rule
        await managed.sandbox.update_network(rules)
        managed.spec.network_rules.CopyFrom(asked)
        log.info("sandbox network rules changed", sandbox_id=sandbox_id, allow=rules.allow, deny=rules.deny)
        return await managed.sandbox.network_status()

    async def network_status(self, sandbox_id: str) -> NetworkStatus | None:
        """None when the sandbox has no network."""
        managed = self.get(sandbox_id)
        if not managed.spec.network:
            return None
        return await managed.sandbox.network_status()

    async def start_jupyter(self, sandbox_id: str, base_url: str) -> Path:
        managed = self.get(sandbox_id)
        async with managed.jupyter_lock:
            try:
                return await start_jupyter(managed.sandbox, managed.host_run_dir, base_url, WORKSPACE_DIR)
            except SandboxError as exc:
                raise SandboxStartFailed(str(exc)) from exc

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL_SECONDS)
            now = time.time()
            for managed in list(self._sandboxes.values()):
                if managed.expires_at <= now:
                    await self.delete(managed.sandbox_id, "expired")
                elif not managed.own_fs and not managed.lock.locked():
                    await self._measure_idle(managed)

    async def _measure_idle(self, managed: ManagedSandbox) -> None:
        """Without a filesystem of its own, an idle sandbox's /tasks is measured too (its
        background processes may write while no task runs); over its quota, it is deleted
        (a running task's steps are stopped by the task's disk watch instead)."""
        disk_mb = SandboxLimits.resolve(self.settings, managed.spec.limits).disk_mb
        max_files = self.settings.sandbox_max_files
        usage = await asyncio.to_thread(measure, managed.host_tasks_dir, disk_mb * MIB, max_files)
        message = over_quota(usage, disk_mb, max_files)
        if message and self._sandboxes.get(managed.sandbox_id) is managed and not managed.lock.locked():
            log.warning(
                "deleting an idle sandbox over its disk quota", sandbox_id=managed.sandbox_id, reason=message
            )
            self.removed_reasons[managed.sandbox_id] = f"deleted while idle: {message}"
            await self.delete(managed.sandbox_id, message)
