"""Where a task runs: its own sandbox (made on first use, closed at the end) or a long-lived one.

A `SandboxLease` answers, for one task: the host task directory, the working directory steps
use, the sandbox itself (with its desktop when the task needs one), the gui service's client,
and, at the end, what to tear down. The step loop never needs to know which kind it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from corral.config import Settings
from corral.errors import SandboxNotFound
from corral.network_rules import NetworkRules
from corral.service_metrics import SANDBOX_STARTS
from corral.steps import StepFailed, needs_desktop
from corral.v1 import task_pb2
from services.executor import task_fs
from services.executor.desktop import Desktop, start_desktop
from services.executor.drivers.base import (
    WORKSPACE_DIR,
    NetworkRefusedCallback,
    Sandbox,
    SandboxConfig,
    SandboxDriver,
    SandboxLimits,
    open_sandbox_dir,
)
from services.executor.errors import TaskDirRefused
from services.executor.gui_client import GuiClient
from services.executor.sandboxes import ManagedSandbox, SandboxManager


class SandboxLease:
    """The sandbox one task runs in."""

    def __init__(
        self,
        settings: Settings,
        driver: SandboxDriver,
        sandboxes: SandboxManager,
        task_id: str,
        spec: task_pb2.TaskSpec,
        on_network_refused: NetworkRefusedCallback | None = None,
    ) -> None:
        self.settings = settings
        self.driver = driver
        self.sandboxes = sandboxes
        # Told of what the sandbox's network refuses (the task's events).
        self.on_network_refused = on_network_refused
        self.task_id = task_id
        self.spec = spec
        self.limits = SandboxLimits.resolve(settings, spec.limits)
        self.host_task_dir = settings.tasks_dir / task_id
        # The task's directory inside the sandbox.
        self.task_dir = f"/tasks/{task_id}"
        # A task naming a long-lived sandbox runs in its workspace (WORKSPACE_DIR), shared by
        # every task there; its own /tasks/{task_id} holds its agent.log and screenshots.
        # Processes and files name the directories explicitly (the sandbox's own is /tasks).
        self.managed: ManagedSandbox | None = None
        self._removed_reason = sandboxes.removed_reasons.get(spec.sandbox_id, "")
        self.cwd = ""
        # Where else an absolute path of a file step may lead (see agent.resolve_path).
        self.file_roots: tuple[str, ...] = ()
        if spec.sandbox_id:
            with contextlib.suppress(SandboxNotFound):
                self.managed = sandboxes.get(spec.sandbox_id)
            if self.managed is not None:
                self.host_task_dir = self.managed.host_tasks_dir / task_id
                workspace = self.managed.sandbox.config.workspace
                self.cwd = WORKSPACE_DIR if workspace else self.task_dir
                self.file_roots = (WORKSPACE_DIR, "/tmp", self.task_dir) if workspace else ()
        self.wants_desktop = needs_desktop(spec)
        self.host_run_dir: Path | None = None
        self.desktop: Desktop | None = None
        self._sandbox: Sandbox | None = None
        self._gui: GuiClient | None = None
        self.task_dir_fd: int | None = None
        # The task directory is a filesystem of its own (task_fs.py), released at the end.
        self.own_fs = False
        # The sandbox's refused-connection count last seen (newly_refused_connections).
        self._refused_seen: int | None = None

    @property
    def note(self) -> str:
        """How agent.log names where the task runs."""
        return f" in sandbox {self.spec.sandbox_id}" if self.managed is not None else ""

    def check_available(self) -> None:
        if self.spec.sandbox_id and self.managed is None:
            why = self._removed_reason or "deleted or expired?"
            raise SandboxNotFound(f"sandbox {self.spec.sandbox_id} is not on this executor ({why})")

    async def prepare_task_dir(self) -> int:
        """Makes the task's directory before anything is written there — in the slot of a warm
        sandbox the task claims now, else on a filesystem of its own where the executor can
        make one (a plain host directory, its quota measured, where not) — and returns a
        descriptor of it (closed by release()), opened once without following links: in a
        long-lived sandbox /tasks is the sandbox's to write, and it could swap /tasks/{task_id}
        for a link to a host directory."""
        if self.managed is None:
            self._sandbox = await self.driver.claim_warm(self.config())
            if self._sandbox is None:
                filesystems = self.driver.task_fs
                self.own_fs = filesystems is not None and await asyncio.to_thread(
                    filesystems.attach, self.host_task_dir, self.limits.disk_mb
                )
        try:
            if self._sandbox is None:
                self.driver.prepare_task_dir(self.host_task_dir)
            # A warm task's directory is in its sandbox's slot (a symlink stays at its host
            # path), opened before any step ran there.
            slot = self._warm_slot()
            parent = slot if slot is not None else self.host_task_dir.parent
            self.task_dir_fd = open_sandbox_dir(parent, self.task_id)
        except OSError as exc:
            raise TaskDirRefused(f"the task directory {self.task_dir} cannot be used: {exc.strerror}") from None
        return self.task_dir_fd

    def _warm_slot(self) -> Path | None:
        slot = getattr(self._sandbox, "warm_slot", None) if self.managed is None else None
        return slot if isinstance(slot, Path) else None

    @property
    def task_dir_moves(self) -> bool:
        """Whether release() moves the task directory (off its own filesystem, out of a slot)."""
        return self.own_fs or self._warm_slot() is not None

    @property
    def disk_note(self) -> str:
        """How the task's disk quota is bounded, for agent.log."""
        filesystems = self.driver.task_fs
        if filesystems is None:
            return ""
        if not filesystems.enabled or self.own_fs or os.path.ismount(self.quota()[0]):
            return filesystems.description
        return "disk quota: measured, not enforced by the kernel (no filesystem of its own could be made)"

    def quota(self) -> tuple[Path, int]:
        """The directory the disk quota covers and its size in MiB: in a long-lived sandbox
        the sandbox's whole /tasks under the sandbox's own limit, in a warm sandbox its whole
        slot (its /tasks: what the task renames next to its directory counts)."""
        if self.managed is not None:
            disk_mb = SandboxLimits.resolve(self.settings, self.managed.spec.limits).disk_mb
            return self.managed.host_tasks_dir, disk_mb
        slot = self._warm_slot()
        return (slot, self.limits.disk_mb) if slot is not None else (self.host_task_dir, self.limits.disk_mb)

    def lock(self) -> asyncio.Lock | contextlib.nullcontext[None]:
        """Held while the task runs: one task at a time in a long-lived sandbox."""
        return self.managed.lock if self.managed is not None else contextlib.nullcontext()

    @property
    def step_env(self) -> dict[str, str]:
        env = {"DISPLAY": self.desktop.display} if self.desktop is not None else {}
        if self.managed is not None:
            # The sandbox's base environment names the sandbox; each task's steps their task.
            env |= {"CORRAL_TASK_ID": self.task_id, "CORRAL_TASK_DIR": self.task_dir}
        return env

    async def sandbox(self) -> Sandbox:
        """The task's sandbox, started (with its desktop) on first use."""
        if self._sandbox is None and self.managed is not None:
            self._sandbox = self.managed.sandbox
            self.desktop = self.managed.desktop
            # What the sandbox's network refuses while this task runs goes in its events.
            self.managed.on_network_refused = self.on_network_refused
            await self.newly_refused_connections()  # what it refused before this task: not ours
        if self._sandbox is None:
            if self.wants_desktop:
                self.host_run_dir = self.settings.run_dir_root / self.task_id
                self.driver.prepare_run_dir(self.host_run_dir)
            self._sandbox = await self.driver.create(self.config())
            SANDBOX_STARTS.labels(self.driver.name, "cold").inc()
            if self.spec.network:
                self.sandboxes.network.track(self._sandbox)
                await self.newly_refused_connections()  # its own start's packets are not the task's
            if self.wants_desktop and self.host_run_dir is not None:
                self.desktop = await start_desktop(self._sandbox, self.host_run_dir)
        return self._sandbox

    async def newly_refused_connections(self) -> int:
        """Connection attempts the sandbox's network refused since the last call (0 without a
        sandbox with network). Lookups are reported one by one (on_network_refused); these are
        counted by nftables, so each step's are told after it (StepLoop)."""
        if self._sandbox is None:
            return 0
        try:
            status = await self._sandbox.network_status()
        except Exception:  # a sandbox dying meanwhile: the step's own result says so
            return 0
        if not status.enabled:
            return 0
        seen, self._refused_seen = self._refused_seen, status.refused_connections
        return max(0, status.refused_connections - seen) if seen is not None else 0

    def config(self) -> SandboxConfig:
        return SandboxConfig(
            task_id=self.task_id,
            host_task_dir=self.host_task_dir,
            limits=self.limits,
            network=self.spec.network,
            # Checked at admission (check_spec), parsed again here: the drivers get the object.
            network_rules=NetworkRules.from_proto(self.spec.network_rules),
            on_network_refused=self.on_network_refused if self.spec.network else None,
            env=dict(self.spec.env),
            desktop=self.wants_desktop,
            host_run_dir=self.host_run_dir,
        )

    def gui(self) -> GuiClient:
        if self.desktop is None:
            raise StepFailed(
                f"sandbox {self.spec.sandbox_id} has no desktop (create it with desktop: true)"
                if self.managed is not None
                else "this sandbox has no desktop"
            )
        if self._gui is None:
            self._gui = GuiClient(self.desktop.host_run_dir)
        return self._gui

    async def release(self, files_back: Callable[[], None] | None = None) -> None:
        """Closes what the task made: its gui connection and, unless long-lived, its sandbox.
        Where the task directory moves (task_dir_moves), `files_back` is called as soon as it
        is back at its host path, before the rest of the teardown (else not at all)."""
        # First: nothing of ours may hold the task's filesystem when it goes.
        if self.task_dir_fd is not None:
            os.close(self.task_dir_fd)
            self.task_dir_fd = None
        if self._gui is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._gui.close())
        if self.managed is not None and self.managed.on_network_refused is self.on_network_refused:
            self.managed.on_network_refused = None
        if self._sandbox is not None and self.managed is None:
            if self._warm_slot() is not None:
                self._sandbox.on_files_back = files_back
            await asyncio.shield(self.sandboxes.network.retire(self._sandbox))  # never raises
            with contextlib.suppress(Exception):
                await asyncio.shield(self._sandbox.close())
        if self.host_run_dir is not None and self.managed is None:
            shutil.rmtree(self.host_run_dir, ignore_errors=True)
        if self.own_fs:
            # Every process is gone: the files move to a plain directory, the filesystem goes.
            self.own_fs = False
            await asyncio.shield(asyncio.to_thread(task_fs.release, self.host_task_dir))
            if files_back is not None:
                files_back()
