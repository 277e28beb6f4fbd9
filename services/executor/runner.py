"""Runs tasks: one sandbox per task, its steps in order, a stream of TaskEvents out.

`TaskRunner` is the executor's core (no gRPC here): it admits tasks up to its capacity, runs
each in a `TaskRun`, and cancels or shuts them down. A TaskRun is three parts: where it runs
(`SandboxLease`, lease.py), its steps and their policy (`StepLoop`, step_loop.py) and what it
leaves behind (`TaskRecorder`, recorder.py: events, agent.log / memory.json, history). Events
carry sequence 0; the scheduler numbers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncGenerator

import structlog

from corral.config import Settings
from corral.errors import InvalidTask, SandboxNotFound
from corral.steps import check_spec
from corral.v1 import memory_pb2, task_pb2
from services.executor.drivers.base import SandboxDriver
from services.executor.errors import AlreadyRunning, AtCapacity, TaskDirRefused, TaskIdUsed
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

    def __init__(self, runner: TaskRunner, task_id: str, spec: task_pb2.TaskSpec) -> None:
        self.runner = runner
        self.task_id = task_id
        self.spec = spec
        self._events: asyncio.Queue[task_pb2.TaskEvent | None] = asyncio.Queue()
        self.recorder = TaskRecorder(task_id, self._events.put_nowait, runner.record)
        self.lease = SandboxLease(
            runner.settings, runner.driver, runner.sandboxes, task_id, spec, self.recorder.network_refused
        )
        self.loop = StepLoop(runner.settings, spec, self.lease, self.recorder)
        self.log = log.bind(task_id=task_id)
        # Its `finished` is out; only its teardown is left (which takes no slot: the client
        # was told the task is over, and may send the next one).
        self.finished = False

    @property
    def cancel_reason(self) -> str | None:
        return self.loop.cancel_reason

    def cancel(self, reason: str) -> None:
        self.loop.cancel(reason)

    async def events(self) -> AsyncGenerator[task_pb2.TaskEvent, None]:
        """Runs the task, yielding its events; closing the iterator early kills the sandbox."""
        worker = asyncio.create_task(self._execute())
        try:
            while True:
                event = await self._events.get()
                if event is None:
                    break
                yield event
            await worker
        finally:
            if not worker.done():
                self.cancel("the executor's client went away")
                worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            self.runner._forget(self)

    async def _execute(self) -> None:
        lease, recorder = self.lease, self.recorder
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
            # The outcome is known: `finished` goes out before the sandbox is torn down (a few
            # ms under bubblewrap, ~90 ms for a container), which the client need not wait for.
            # The journal's last line is written now, and moves with the task directory.
            self.recorder.task_finished(state, error)
            self.finished = True
        finally:
            # The task directory may move (off its own filesystem, out of a warm slot): the
            # journal (still open when the task was cancelled) lets go of it and writes again
            # where it ends up.
            moves = lease.task_dir_moves
            if moves and recorder.journal is not None:
                recorder.journal.suspend()
            await lease.release()
            if moves and recorder.journal is not None:
                fd = lease.reopen_task_dir()
                recorder.journal.resume(fd)
                if fd is not None:
                    os.close(fd)
        self._events.put_nowait(None)

    def _finish(self, state: task_pb2.TaskState.ValueType, error: str) -> None:
        self.recorder.task_finished(state, error)
        self._events.put_nowait(None)


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
        self._runs: dict[str, TaskRun] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def running_task_ids(self) -> list[str]:
        return sorted(self._runs)

    def start(self, task_id: str, spec: task_pb2.TaskSpec) -> TaskRun:
        """Reserves a slot for the task (synchronously, so admission has no races)."""
        if not TASK_ID_PATTERN.match(task_id) or task_id in {".", ".."}:
            raise InvalidTask(
                f"invalid task id {task_id!r}: use 1-128 letters, digits, '.', '_' or '-'"
            )
        check_spec(spec, self.settings)  # the scheduler's own check, again at admission
        if task_id in self._runs:
            raise AlreadyRunning(f"task {task_id} is already running on this executor")
        if sum(not other.finished for other in self._runs.values()) >= self.capacity:
            raise AtCapacity(f"executor {self.executor_id} is at capacity ({self.capacity} tasks)")
        run = TaskRun(self, task_id, spec)
        if os.path.lexists(run.lease.host_task_dir):
            # A run under a used id would work in that task's directory, among its files.
            raise TaskIdUsed(f"task id {task_id} was already used on this executor; task ids are never reused")
        self._runs[task_id] = run
        self._idle.clear()
        return run

    def _forget(self, run: TaskRun) -> None:
        if self._runs.get(run.task_id) is run:
            del self._runs[run.task_id]
        if not self._runs:
            self._idle.set()

    def cancel(self, task_id: str, reason: str = "") -> bool:
        run = self._runs.get(task_id)
        if run is None:
            return False
        run.cancel(reason or "cancelled")
        return True

    def record(self, event: memory_pb2.HistoryEvent) -> None:
        if self.history is not None:
            self.history.record(event)

    async def shutdown(self, reason: str = "the executor is shutting down") -> None:
        """Cancels every running task and waits (briefly) for their sandboxes to go."""
        runs = list(self._runs.values())
        for run in runs:
            run.cancel(reason)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 10)


__all__ = ["AGENT_LOG", "AlreadyRunning", "AtCapacity", "InvalidTask", "TaskRun", "TaskRunner"]
