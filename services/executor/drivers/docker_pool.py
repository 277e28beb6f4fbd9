"""The docker driver's warm pool: started containers waiting for a task, refilled in the background.

A warm container is started with the default limits, no network, and its own fresh, empty host
"slot" directory (tasks_dir/.warm/<slot>) mounted at /tasks, its agent sitting in /tasks. A task
claims one (DockerSandbox.claim): its directory moves into the slot, so it appears inside as
/tasks/{task_id} with nothing else beside it, and the agent changes into it. Tasks asking for
network or other limits get a container of their own (a cold start).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections import deque
from typing import TYPE_CHECKING

import structlog

from services.executor.drivers.base import SandboxConfig, SandboxError, SandboxLimits

if TYPE_CHECKING:
    from services.executor.drivers.docker import DockerDriver, DockerSandbox

log = structlog.get_logger()

RETRY_SECONDS = 5.0


class WarmPool:
    def __init__(self, driver: DockerDriver, size: int) -> None:
        self.driver = driver
        self.size = size
        self._ready: deque[DockerSandbox] = deque()
        self._wanted = asyncio.Event()
        self._filler: asyncio.Task[None] | None = None
        self.started_total = 0  # containers this pool started (tests, benchmarks)
        self.claimed_total = 0
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    def start(self) -> None:
        if self.size > 0 and self._filler is None:
            self._wanted.set()
            self._filler = asyncio.create_task(self._fill())

    async def stop(self) -> None:
        if self._filler is not None:
            self._filler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._filler
            self._filler = None
        while self._ready:
            await self._ready.popleft().close()

    def take(self) -> DockerSandbox | None:
        """A ready container (whose agent still answers), or None; asks for a replacement."""
        while self._ready:
            sandbox = self._ready.popleft()
            self._wanted.set()
            if sandbox.alive:
                self.claimed_total += 1
                return sandbox
            closing = asyncio.create_task(sandbox.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        if self.size > 0:
            self._wanted.set()
        return None

    async def _fill(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            while len(self._ready) < self.size:
                try:
                    sandbox = await self._start_one()
                except SandboxError as exc:
                    log.warning("could not start a warm sandbox container", error=str(exc))
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
                self._ready.append(sandbox)

    async def _start_one(self) -> DockerSandbox:
        from services.executor.drivers.docker import LABEL_POOL, WARM_DIR, DockerSandbox

        settings = self.driver.settings
        slot = settings.tasks_dir / WARM_DIR / uuid.uuid4().hex[:16]
        slot.mkdir(parents=True, mode=0o755)
        config = SandboxConfig(
            task_id="",
            host_task_dir=slot,
            limits=SandboxLimits(
                memory_mb=settings.sandbox_memory_mb,
                max_processes=settings.sandbox_max_processes,
                max_file_size_mb=settings.sandbox_max_file_size_mb,
                max_output_bytes=settings.max_output_bytes,
            ),
        )
        sandbox = DockerSandbox(self.driver, config)
        sandbox.warm_slot = slot
        try:
            await sandbox.start(
                mounts={self.driver.host_path(slot): "/tasks"}, workdir="/tasks", labels={LABEL_POOL: "warm"}
            )
        except BaseException:
            await sandbox.close()
            shutil.rmtree(slot, ignore_errors=True)
            raise
        self.started_total += 1
        return sandbox
