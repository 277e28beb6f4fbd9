"""A driver-neutral warm pool: started sandboxes waiting for a task, refilled in the background.

A warm sandbox is started before any task exists, with its own fresh, empty host "slot"
directory (tasks_dir/.warm/<slot>, a filesystem of its own where task_fs.py can make one)
mounted at /tasks and its agent sitting there. A task claims one when it starts: its directory
is made in the slot (a symlink stays at tasks_dir/{task_id}), so it appears inside as
/tasks/{task_id} with nothing beside it, and the agent changes into it. When the sandbox
closes, the directory moves (or, from a filesystem of its own, is copied) back. The driver decides which sandbox configurations a
warm sandbox fits; the others get a sandbox of their own (a cold start).

Both the bubblewrap and the docker driver use this module.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Generic, ParamSpec, Protocol, TypeVar

import structlog

from corral.service_metrics import SANDBOX_STARTS, WARM_POOL_CLAIMS
from services.executor import task_fs
from services.executor.drivers.base import SandboxConfig, SandboxError

log = structlog.get_logger()

# Hidden (not a valid task id) directory of tasks_dir holding the warm sandboxes' /tasks.
WARM_DIR = task_fs.WARM_DIR
RETRY_SECONDS = 5.0
# A refill waits this long after a claim: starting a sandbox takes the event loop for a few ms
# (fork/exec), which would otherwise land on the claiming task's first step.
REFILL_DELAY_SECONDS = 0.05
# Sandboxes started at once to refill the pool: a burst of claims is met by a burst of starts
# (one at a time, a pool of 8 refilled at ~25/s while tasks were claimed at 100+/s).
REFILL_PARALLEL = 2
# A pool that refills when quiet waits at most this long for the sandboxes it handed out to end,
# looking this often.
QUIET_MAX_WAIT_SECONDS = 1.0
QUIET_POLL_SECONDS = 0.01
# Threads of their own for a refill's blocking work (a slot's filesystem: mkfs and mount): off
# the event loop (a slot's mkfs + mount took it for ~10 ms at each refill: the running task's
# events and the next task's start waited), not in the default executor, where a running task's
# own thread work (its copy-out, its cgroup's removal) would queue behind it, and at a lower CPU
# priority (inherited by mkfs and mount) than the tasks' own work, as task_fs's releases.
REFILL_NICE = 10


def _lower_priority() -> None:
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), REFILL_NICE)


_refill_threads = concurrent.futures.ThreadPoolExecutor(
    max_workers=REFILL_PARALLEL, thread_name_prefix="corral-warm-refill", initializer=_lower_priority
)
P = ParamSpec("P")
R = TypeVar("R")


async def in_refill_thread(function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """`function(*args, **kwargs)` in a refill thread (see _refill_threads)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_refill_threads, lambda: function(*args, **kwargs))


class PooledSandbox(Protocol):
    @property
    def alive(self) -> bool:
        """Whether the sandbox (and its agent) still runs."""

    @property
    def ended(self) -> bool:
        """Whether its close() returned (its processes gone, its task directory back)."""

    async def claim(self, config: SandboxConfig, prepare_dir: Callable[[Path], None]) -> None:
        """Hands the sandbox a task (AgentSandbox.claim); raises SandboxError or OSError."""

    async def close(self) -> None: ...


S = TypeVar("S", bound=PooledSandbox)


class WarmPool(Generic[S]):
    """Keeps `size` sandboxes made by `start_one` ready; `take()` hands one out and asks for another."""

    def __init__(
        self,
        size: int,
        start_one: Callable[[], Awaitable[S]],
        what: str = "sandbox",
        driver: str = "",
        refill_when_quiet: bool = False,
    ) -> None:
        self.size = size
        self.start_one = start_one
        self.what = what
        self.driver = driver  # the label of its metrics
        # Refill once the sandboxes handed out have ended (at most QUIET_MAX_WAIT_SECONDS),
        # unless none is left ready: where a start costs a lot of CPU (a container: dockerd,
        # runc, its agent), it would otherwise land on the task that just claimed one, its end
        # included; a drained pool refills at once (the next task would wait for a start).
        self.refill_when_quiet = refill_when_quiet
        self._handed_out: list[S] = []
        self._ready: deque[S] = deque()
        self._wanted = asyncio.Event()
        self._filler: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.started_total = 0  # sandboxes this pool started (tests, benchmarks)
        self.claimed_total = 0

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    def start(self) -> None:
        if self.size > 0 and self._filler is None:
            self._wanted.set()
            self._filler = asyncio.create_task(self._fill())

    async def stop(self) -> None:
        if self._filler is not None:
            # Cancelled again until it ends: on Python 3.11 a wait_for inside a sandbox start can
            # swallow a cancellation that lands as the awaited thing completes.
            while not self._filler.done():
                self._filler.cancel()
                await asyncio.wait({self._filler}, timeout=1.0)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                self._filler.result()
            self._filler = None
        while self._ready:
            self._close_later(self._ready.popleft())
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def claim(self, config: SandboxConfig, prepare_dir: Callable[[Path], None]) -> S | None:
        """A ready sandbox handed `config`'s task, or None (none ready, or the claim failed:
        that sandbox is closed, its directory goes back, and the task gets a cold one)."""
        warm = self.take()
        if warm is None:
            if self.size > 0:
                WARM_POOL_CLAIMS.labels(self.driver, "miss").inc()
            return None
        try:
            await warm.claim(config, prepare_dir)
            WARM_POOL_CLAIMS.labels(self.driver, "hit").inc()
            if self.refill_when_quiet:
                self._handed_out.append(warm)
            return warm
        except (SandboxError, OSError) as exc:
            log.warning(f"could not claim a warm {self.what}", task_id=config.task_id, error=str(exc))
            await warm.close()
            return None
        except BaseException:
            await warm.close()
            raise

    def take(self) -> S | None:
        """A ready sandbox (still alive), or None; either way a replacement is started."""
        while self._ready:
            sandbox = self._ready.popleft()
            self._wanted.set()
            if sandbox.alive:
                self.claimed_total += 1
                return sandbox
            self._close_later(sandbox)
        if self.size > 0 and self._filler is not None:
            self._wanted.set()
        return None

    def _close_later(self, sandbox: S) -> None:
        closing = asyncio.create_task(sandbox.close())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _fill(self) -> None:
        starting: set[asyncio.Task[bool]] = set()
        try:
            while True:
                await self._wanted.wait()
                if self.claimed_total and not self.refill_when_quiet:  # a refill, not the first fill
                    await asyncio.sleep(REFILL_DELAY_SECONDS)
                elif self.claimed_total and self._ready:
                    await self._quiet()
                    if self._ready:  # (not drained meanwhile) its `finished` goes out first
                        await asyncio.sleep(REFILL_DELAY_SECONDS)
                self._wanted.clear()
                while len(self._ready) + len(starting) < self.size or starting:
                    while len(self._ready) + len(starting) < self.size and len(starting) < REFILL_PARALLEL:
                        starting.add(asyncio.create_task(self._start_one()))
                    done, _ = await asyncio.wait(starting, return_when=asyncio.FIRST_COMPLETED)
                    starting -= done
                    if not all(task.result() for task in done):
                        await asyncio.sleep(RETRY_SECONDS)
        finally:
            for task in starting:
                task.cancel()
            for task in starting:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task  # one that got through is in _ready, which stop() empties

    async def _quiet(self) -> None:
        """Until every sandbox handed out has ended, the pool drained, or QUIET_MAX_WAIT_SECONDS
        (refill_when_quiet)."""
        waited = 0.0
        while waited < QUIET_MAX_WAIT_SECONDS:
            self._handed_out = [sandbox for sandbox in self._handed_out if not sandbox.ended]
            if not self._handed_out or not self._ready:
                return
            await asyncio.sleep(QUIET_POLL_SECONDS)
            waited += QUIET_POLL_SECONDS
        self._handed_out.clear()

    async def _start_one(self) -> bool:
        """One more ready sandbox; False when it could not be started."""
        try:
            sandbox = await self.start_one()
        except (SandboxError, OSError) as exc:
            log.warning(f"could not start a warm {self.what}", error=str(exc))
            return False
        self.started_total += 1
        SANDBOX_STARTS.labels(self.driver, "warm").inc()
        self._ready.append(sandbox)
        return True


# --- slots -------------------------------------------------------------------------------------


def make_in_slot(task_dir: Path, slot: Path, task_id: str, prepare_dir: Callable[[Path], None]) -> None:
    """Makes a task's directory in a warm slot (`prepare_dir` hands it to the sandbox user),
    with a relative symlink at its host path while the task runs. Made there from the start
    (the task claims its sandbox first): a slot may be a filesystem of its own (task_fs.py),
    which a rename could not enter."""
    inside = slot / task_id
    prepare_dir(inside)
    task_dir.symlink_to(os.path.relpath(inside, task_dir.parent))


def release_slot(slot: Path, task_dir: Path | None, task_id: str) -> None:
    """After its sandbox ended: the task directory goes back in place, the slot goes away."""
    if return_task_dir(slot, task_dir, task_id):
        remove_slot(slot)


def return_task_dir(slot: Path, task_dir: Path | None, task_id: str) -> bool:
    """After its sandbox ended: the claimed task's directory goes back to `task_dir` (moved,
    or copied out of a slot that is a filesystem of its own). Returns whether the slot may go
    (remove_slot) now; a slot holding a task directory that could not move stays."""
    if os.path.ismount(slot):
        if task_dir is not None:
            task_fs.keep_from_slot(slot, task_id, task_dir)
        return True
    if task_dir is not None:
        inside = slot / task_id
        try:
            if inside.is_dir() and not inside.is_symlink():
                if task_dir.is_symlink():
                    task_dir.unlink()
                inside.rename(task_dir)  # fails, rather than overwrite, if something is there
        except OSError as exc:
            # Keep the slot (and the task's files in it); restore_warm_dirs retries next start.
            log.warning("could not move a task directory back from its warm slot", slot=str(slot), error=str(exc))
            return False
        if inside.exists() or inside.is_symlink():
            # The sandbox replaced its directory (by a symlink, say): the slot goes all the
            # same (what the task put elsewhere in it must not outlive it), an empty one stays.
            log.warning("a task directory was no directory at its end", slot=str(slot), task_id=task_id)
            with contextlib.suppress(OSError):
                task_dir.unlink()
                task_dir.mkdir(mode=0o755)
    return True


def remove_slot(slot: Path) -> None:
    """The slot, once its task directory is back: what else the sandbox left in /tasks goes
    with it (its filesystem unmounted, where it is one)."""
    if os.path.ismount(slot):
        task_fs.discard(slot)
    else:
        shutil.rmtree(slot, ignore_errors=True)


def recover_task_dirs(tasks_dir: Path, filesystems: task_fs.TaskFilesystems | None) -> None:
    """At a driver's start, once no sandbox of a previous run is left: the filesystems that
    run left are released (their task directories copied out), then task directories left in
    plain warm slots move back."""
    if filesystems is not None:
        filesystems.recover()
    restore_warm_dirs(tasks_dir)


def restore_warm_dirs(tasks_dir: Path) -> None:
    """Moves task directories a crashed run left inside warm slots back to tasks_dir."""
    warm = tasks_dir / WARM_DIR
    if not warm.is_dir():
        return
    for slot in warm.iterdir():
        for task_dir in slot.iterdir() if slot.is_dir() and not slot.is_symlink() else []:
            # Only what a task's symlink points at: the sandbox may have left other files there.
            link = tasks_dir / task_dir.name
            with contextlib.suppress(OSError):
                if link.is_symlink() and link.resolve() == task_dir.resolve():
                    link.unlink()
                    task_dir.rename(link)
        shutil.rmtree(slot, ignore_errors=True)
