"""Runs tasks: one sandbox per task, its steps in order, a stream of TaskEvents out.

`TaskRunner` is the executor's core (no gRPC here): it admits tasks up to its capacity, runs
each in a `TaskRun`, and cancels or shuts them down. A TaskRun is three parts: where it runs
(`SandboxLease`, lease.py), its steps and their policy (`StepLoop`, step_loop.py) and what it
leaves behind (`TaskRecorder`, recorder.py: events, agent.log / memory.json, history). Events
are numbered 1, 2, ... in the run's EventBuffer (the scheduler renumbers them in its own log).

A run does not depend on the stream that started it: when the scheduler goes away the task goes
on, its events kept, for the orphan grace (CORRAL_EXECUTOR_ORPHAN_GRACE_SECONDS); a scheduler
back in time follows it again (`attach`), else it is cancelled. Each run carries the epoch of its
assignment (a fencing token): an older assignment of the same task is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from collections.abc import AsyncGenerator

import structlog

from corral.config import Settings
from corral.errors import InvalidTask, SandboxNotFound
from corral.internal.v1 import registry_pb2
from corral.steps import check_spec
from corral.v1 import memory_pb2, task_pb2
from services.executor.drivers.base import SandboxDriver
from services.executor.errors import (
    AlreadyRunning,
    AtCapacity,
    DeposedScheduler,
    StaleAssignment,
    TaskDirRefused,
    TaskIdUsed,
    TaskNotHeld,
)
from services.executor.event_buffer import EventBuffer
from services.executor.history import HistoryRecorder
from services.executor.journal import AGENT_LOG, TaskJournal
from services.executor.lease import SandboxLease
from services.executor.recorder import TaskRecorder
from services.executor.sandboxes import SandboxManager
from services.executor.step_loop import StepLoop

log = structlog.get_logger()

TASK_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class TaskRun:
    """One task: its sandbox, its steps, its event stream."""

    def __init__(self, runner: TaskRunner, task_id: str, spec: task_pb2.TaskSpec, epoch: int = 0) -> None:
        self.runner = runner
        self.task_id = task_id
        self.spec = spec
        self.epoch = epoch
        self.buffer = EventBuffer(runner.spill_dir / f"{task_id}.events", runner.settings.executor_event_buffer_bytes)
        self.recorder = TaskRecorder(task_id, self.buffer.append, runner.record)
        self.lease = SandboxLease(
            runner.settings, runner.driver, runner.sandboxes, task_id, spec, self.recorder.network_refused
        )
        self.loop = StepLoop(runner.settings, spec, self.lease, self.recorder)
        self.log = log.bind(task_id=task_id)
        # Its `finished` is out; only its teardown is left (which takes no slot: the client
        # was told the task is over, and may send the next one).
        self.finished = False
        self.readers = 0
        self.delivered = False  # a reader got every event, `finished` included
        self.dropped = False  # the scheduler no longer wants it: forgotten once it ends
        self.orphan_timer: asyncio.Task[None] | None = None
        self.worker: asyncio.Task[None] | None = None

    @property
    def cancel_reason(self) -> str | None:
        return self.loop.cancel_reason

    def cancel(self, reason: str) -> None:
        self.loop.cancel(reason)

    @property
    def ended(self) -> bool:
        return self.buffer.closed

    def begin(self) -> None:
        self.worker = asyncio.create_task(self._execute(), name=f"run-{self.task_id}")

    async def events(self, after: int = 0) -> AsyncGenerator[task_pb2.TaskEvent, None]:
        """The task's events after `after`, then live until it ends. A reader that goes away
        early leaves the task running (orphaned once no reader is left)."""
        self.readers += 1
        self.runner._claimed(self)
        try:
            async for event in self.buffer.follow(after):
                yield event
            self.delivered = True
            self.runner._delivered(self)
        finally:
            self.readers -= 1
            if self.readers == 0:
                self.runner._released(self)

    async def _execute(self) -> None:
        lease, recorder = self.lease, self.recorder
        pending: tuple[task_pb2.TaskState.ValueType, str] | None = None

        def files_back() -> None:
            nonlocal pending
            if pending is not None:
                recorder.task_finished(*pending)
                pending = None

        try:
            try:
                lease.check_available()
                recorder.journal = TaskJournal(await lease.prepare_task_dir())
                async with lease.lock():
                    recorder.task_started(
                        self.runner.executor_id, self.runner.driver.name, lease.task_dir,
                        lease.note, len(self.spec.steps),
                    )
                    if lease.disk_note:
                        recorder.journal.log(lease.disk_note)
                    state, error = await self.loop.run()
            except asyncio.CancelledError:
                self._finish(task_pb2.TASK_STATE_CANCELLED, self.cancel_reason or "cancelled")
                raise
            except (SandboxNotFound, TaskDirRefused) as exc:
                state, error = task_pb2.TASK_STATE_FAILED, str(exc)
            except Exception as exc:
                self.log.exception("task crashed")
                state, error = task_pb2.TASK_STATE_FAILED, f"the executor failed: {exc}"
            # The outcome is known. A client told the task ended may read its directory at
            # once, so `finished` goes out before the teardown (a few ms under bubblewrap, ~90 ms
            # for a container) where the directory stays put; where it moves (off its own
            # filesystem, out of a warm slot), as soon as it is back in place, before the rest
            # of the teardown (the slot's unmount, the cgroup's removal). The journal's last
            # line is written now, and moves with the directory.
            if lease.task_dir_moves:
                pending = (state, error)
                recorder.finish_journal(state, error)
            else:
                self.recorder.task_finished(state, error)
            self.finished = True  # its slot is free either way
        finally:
            # The journal (still open if the run was interrupted) lets go of the directory.
            if lease.task_dir_moves and recorder.journal is not None:
                recorder.journal.suspend()
            await lease.release(files_back)
        files_back()  # where release() did not call it
        # Torn down: its stream ends, and the run is held until a scheduler has read it all.
        self.buffer.close()
        self.runner._ended(self)

    def _finish(self, state: task_pb2.TaskState.ValueType, error: str) -> None:
        self.recorder.task_finished(state, error)
        self.buffer.close()
        self.runner._ended(self)


class TaskRunner:
    """Admits tasks up to the executor's capacity and keeps track of the running ones."""

    def __init__(
        self,
        settings: Settings,
        driver: SandboxDriver,
        executor_id: str,
        history: HistoryRecorder | None = None,
        sandboxes: SandboxManager | None = None,
    ) -> None:
        self.settings = settings
        self.driver = driver
        self.sandboxes = sandboxes or SandboxManager(settings, driver)
        self.executor_id = executor_id
        self.history = history
        self.capacity = settings.executor_capacity
        self._runs: dict[str, TaskRun] = {}  # running: each holds a slot
        self._held: dict[str, TaskRun] = {}  # ended, their events not yet all read by a scheduler
        self._idle = asyncio.Event()
        self._idle.set()
        # A previous process's spilled events mean nothing to this one (its runs are gone).
        self.spill_dir = settings.data_dir / "event-spill" / executor_id
        self.leader_epoch = 0  # see learn_leader
        shutil.rmtree(self.spill_dir, ignore_errors=True)

    def learn_leader(self, epoch: int) -> None:
        """The leadership epoch of the scheduler this executor registered with (it only grows)."""
        self.leader_epoch = max(self.leader_epoch, epoch)

    def check_leader(self, epoch: int) -> None:
        """Refuses a call acting on a run from a scheduler replica deposed since (the lease's
        fencing token, as the assignment epoch is a task's): its database writes are refused by
        the lease, and this refuses what it would do here, e.g. start a task the new leader has
        requeued, or cancel one the new leader follows."""
        if epoch < self.leader_epoch:
            raise DeposedScheduler(
                f"scheduler leadership epoch {epoch} is older than epoch {self.leader_epoch}, which this "
                "executor registered with: the call comes from a deposed scheduler replica"
            )

    @property
    def running_task_ids(self) -> list[str]:
        return sorted(self._runs)

    def start(self, task_id: str, spec: task_pb2.TaskSpec, epoch: int = 0) -> TaskRun:
        """Reserves a slot for the task and starts it (synchronously, so admission has no races)."""
        if not TASK_ID_PATTERN.match(task_id) or task_id in {".", ".."}:
            raise InvalidTask(
                f"invalid task id {task_id!r}: use 1-128 letters, digits, '.', '_' or '-'"
            )
        check_spec(spec, self.settings)  # the scheduler's own check, again at admission
        held = self._runs.get(task_id) or self._held.get(task_id)
        if held is not None:
            if epoch < held.epoch:
                raise StaleAssignment(
                    f"stale assignment of task {task_id}: epoch {epoch} is older than epoch {held.epoch}, "
                    "which this executor runs it under"
                )
            where = "is already running" if task_id in self._runs else "already ran"
            raise AlreadyRunning(f"task {task_id} {where} on this executor (epoch {held.epoch}); it is never started twice")
        if sum(not other.finished for other in self._runs.values()) >= self.capacity:
            raise AtCapacity(f"executor {self.executor_id} is at capacity ({self.capacity} tasks)")
        run = TaskRun(self, task_id, spec, epoch)
        if os.path.lexists(run.lease.host_task_dir):
            # A run under a used id would work in that task's directory, among its files.
            raise TaskIdUsed(f"task id {task_id} was already used on this executor; task ids are never reused")
        self._runs[task_id] = run
        self._idle.clear()
        run.begin()
        return run

    def attach(self, task_id: str, epoch: int) -> TaskRun:
        """A run this executor holds, for a scheduler taking it back under its assignment's epoch."""
        run = self._runs.get(task_id) or self._held.get(task_id)
        if run is None:
            raise TaskNotHeld(f"task {task_id} is not running on executor {self.executor_id}, nor held there")
        if epoch != run.epoch:
            raise StaleAssignment(
                f"task {task_id} runs on executor {self.executor_id} under epoch {run.epoch}, not {epoch}"
            )
        return run

    def held_tasks(self) -> list[registry_pb2.HeldTask]:
        """What this executor runs or holds the events of, for its registration."""
        return [
            registry_pb2.HeldTask(task_id=r.task_id, epoch=r.epoch, last_sequence=r.buffer.last, finished=r.ended)
            for r in (*self._runs.values(), *self._held.values())
            if not r.dropped
        ]

    def drop(self, task_id: str, reason: str) -> None:
        """The scheduler no longer wants the task: cancelled if running, then forgotten."""
        run = self._runs.get(task_id) or self._held.get(task_id)
        if run is None:
            return
        run.dropped = True
        if run.ended:
            self._forget(run)
        else:
            run.cancel(reason)

    def _ended(self, run: TaskRun) -> None:
        """The run's slot is free; its events stay until a scheduler read them all."""
        if self._runs.get(run.task_id) is run:
            del self._runs[run.task_id]
        if not self._runs:
            self._idle.set()
        if run.dropped:
            self._forget(run)
        else:
            # Delivered too (`finished` goes out before teardown): a scheduler killed before
            # storing what it read asks for it again (_released keeps it for the grace).
            self._held[run.task_id] = run

    def _claimed(self, run: TaskRun) -> None:
        if run.orphan_timer is not None:
            run.orphan_timer.cancel()
            run.orphan_timer = None

    def _released(self, run: TaskRun) -> None:
        """No scheduler follows the run any more. Unread events: it goes on for the grace, then
        is cancelled. All read: they are kept as long all the same (on disk), since a scheduler
        killed before storing what it read comes back asking for them (AttachTask)."""
        grace = self.settings.executor_orphan_grace_seconds
        if run.delivered:
            run.buffer.spill_all()
            run.orphan_timer = asyncio.get_running_loop().create_task(self._forget_later(run, grace))
            return
        run.log.info("the scheduler stopped following the task; keeping it", grace_seconds=grace)
        run.orphan_timer = asyncio.get_running_loop().create_task(self._expire(run, grace))

    async def _forget_later(self, run: TaskRun, grace: float) -> None:
        await asyncio.sleep(grace)
        if not run.readers:
            self._forget(run)

    async def _expire(self, run: TaskRun, grace: float) -> None:
        await asyncio.sleep(grace)
        if run.readers or run.delivered:
            return
        run.orphan_timer = None
        run.log.warning("no scheduler took the task back; letting it go", grace_seconds=grace)
        run.dropped = True
        if run.ended:
            self._forget(run)
        else:
            run.cancel(f"no scheduler took the task back within {grace:g}s of losing it")

    def _delivered(self, run: TaskRun) -> None:
        self._claimed(run)  # kept a while yet: see _released

    def _forget(self, run: TaskRun) -> None:
        if self._held.get(run.task_id) is run:
            del self._held[run.task_id]
        run.buffer.discard()

    def cancel(self, task_id: str, reason: str = "") -> bool:
        run = self._runs.get(task_id)
        if run is None:
            return False
        run.cancel(reason or "cancelled")
        return True

    def record(self, event: memory_pb2.HistoryEvent, batch: bool = False) -> None:
        if self.history is not None:
            self.history.record(event, batch)

    async def shutdown(self, reason: str = "the executor is shutting down") -> None:
        """Cancels every running task and waits (briefly) for their sandboxes to go."""
        runs = list(self._runs.values())
        for run in runs:
            run.cancel(reason)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 10)
        for run in list(self._held.values()):
            self._forget(run)


__all__ = ["AGENT_LOG", "AlreadyRunning", "AtCapacity", "InvalidTask", "TaskRun", "TaskRunner"]
