"""Runs tasks: one sandbox per task, its steps in order, a stream of TaskEvents out.

`TaskRunner` is the executor's core (no gRPC here): it admits tasks up to its capacity, runs
each in a `TaskRun`, and cancels or shuts them down. Events carry sequence 0; the scheduler
numbers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path

import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from corral.config import Settings
from corral.errors import InvalidTask, SandboxNotFound
from corral.limits import limits_problem
from corral.schema import STEP_STATE_NAMES, TASK_STATE_NAMES, step_tool
from corral.v1 import memory_pb2, task_pb2
from services.executor.desktop import Desktop, start_desktop
from services.executor.disk_quota import DiskWatch
from services.executor.drivers.base import (
    FileRefused,
    OutputCallback,
    ProcessKind,
    ProcessRequest,
    ProcessResult,
    Sandbox,
    SandboxConfig,
    SandboxDriver,
    SandboxError,
    SandboxLimits,
    StreamName,
)
from services.executor.errors import AlreadyRunning, AtCapacity
from services.executor.gui_steps import GuiClient, GuiStepError, ScreenshotWriter, perform
from services.executor.history import HistoryRecorder, history_event
from services.executor.journal import AGENT_LOG, TaskJournal
from services.executor.outcome import describe_failure
from services.executor.sandboxes import ManagedSandbox, SandboxManager

log = structlog.get_logger()

TASK_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
PROCESS_TOOLS: dict[str, ProcessKind] = {
    "shell": "shell",
    "python": "python",
    "typescript": "typescript",
}
_STREAMS: dict[StreamName, task_pb2.OutputStream.ValueType] = {
    "stdout": task_pb2.OUTPUT_STREAM_STDOUT,
    "stderr": task_pb2.OUTPUT_STREAM_STDERR,
}


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def _seconds(duration: object) -> float:
    return float(duration.ToNanoseconds()) / 1e9  # type: ignore[attr-defined]


def describe_action(step: task_pb2.Step) -> str:
    """What the step does, human-readable, for agent.log and history."""
    tool = step_tool(step)
    if tool == "shell":
        return step.shell.command
    if tool == "python":
        return step.python.code
    if tool == "typescript":
        return step.typescript.code
    if tool == "read_file":
        return f"read {step.read_file.path}"
    if tool == "write_file":
        return f"write {step.write_file.path} ({len(step.write_file.content.encode())} bytes)"
    if tool == "gui":
        return f"gui {step.gui.action}"
    return "(no action)"


@dataclass
class _Outcome:
    state: task_pb2.StepState.ValueType
    result: ProcessResult
    error: str


class TaskRun:
    """One task: its sandbox, its steps, its event stream."""

    def __init__(
        self,
        runner: TaskRunner,
        task_id: str,
        spec: task_pb2.TaskSpec,
    ) -> None:
        self.runner = runner
        self.settings = runner.settings
        self.task_id = task_id
        self.spec = spec
        self.host_task_dir = self.settings.tasks_dir / task_id
        # A task naming a long-lived sandbox runs in it, in /tasks/{task_id} there.
        self.managed: ManagedSandbox | None = None
        self.cwd = ""
        if spec.sandbox_id:
            with contextlib.suppress(SandboxNotFound):
                self.managed = runner.sandboxes.get(spec.sandbox_id)
            if self.managed is not None:
                self.host_task_dir = self.managed.host_tasks_dir / task_id
                self.cwd = f"/tasks/{task_id}"
        self.wants_desktop = spec.desktop or any(step_tool(s) == "gui" for s in spec.steps)
        self.host_run_dir: Path | None = None
        self.desktop: Desktop | None = None
        self._gui: GuiClient | None = None
        self.limits = SandboxLimits.resolve(self.settings, spec.limits)
        self.cancel_reason: str | None = None
        self._events: asyncio.Queue[task_pb2.TaskEvent | None] = asyncio.Queue()
        self._step_task: asyncio.Task[_Outcome] | None = None
        self._sandbox: Sandbox | None = None
        # Set when the sandbox itself failed: no later step can run, continue_on_error or not.
        self._sandbox_error: SandboxError | None = None
        self._current_index = 0
        # Why the disk watch stopped the running step (reset at each step).
        self._quota_error: str | None = None
        self.log = log.bind(task_id=task_id)

    # --- control ---------------------------------------------------------------------------

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason or "cancelled"
        if self._step_task is not None:
            self._step_task.cancel()

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

    def _emit(self, **payload: object) -> None:
        event = task_pb2.TaskEvent(task_id=self.task_id, **payload)  # type: ignore[arg-type]
        event.time.CopyFrom(_now())
        self._events.put_nowait(event)

    # --- the task --------------------------------------------------------------------------

    async def _execute(self) -> None:
        journal: TaskJournal | None = None
        try:
            if self.spec.sandbox_id and self.managed is None:
                raise SandboxNotFound(f"sandbox {self.spec.sandbox_id} is not on this executor (deleted or expired?)")
            self.runner.driver.prepare_task_dir(self.host_task_dir)
            journal = TaskJournal(self.host_task_dir)
            if self.managed is not None:
                async with self.managed.lock:  # one task at a time in a sandbox
                    state, error = await self._run_steps(journal)
            else:
                state, error = await self._run_steps(journal)
        except asyncio.CancelledError:
            state, error = task_pb2.TASK_STATE_CANCELLED, self.cancel_reason or "cancelled"
            self._finish(journal, state, error)
            raise
        except SandboxNotFound as exc:
            state, error = task_pb2.TASK_STATE_FAILED, str(exc)
        except Exception as exc:
            self.log.exception("task crashed")
            state, error = task_pb2.TASK_STATE_FAILED, f"the executor failed: {exc}"
        finally:
            if self._gui is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._gui.close())
            if self._sandbox is not None and self.managed is None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._sandbox.close())
            if self.host_run_dir is not None and self.managed is None:
                shutil.rmtree(self.host_run_dir, ignore_errors=True)
        self._finish(journal, state, error)

    def _finish(
        self, journal: TaskJournal | None, state: task_pb2.TaskState.ValueType, error: str
    ) -> None:
        name = TASK_STATE_NAMES[state]
        if journal is not None:
            journal.log(f"task {name}" + (f": {error}" if error else ""))
            journal.close()
        self.runner.record(
            history_event(self.task_id, memory_pb2.HISTORY_KIND_TASK_FINISHED, state=name, error=error)
        )
        self._emit(finished=task_pb2.TaskFinished(state=state, error=error))
        self._events.put_nowait(None)
        self.log.info("task finished", state=name, error=error or None)

    async def _run_steps(
        self, journal: TaskJournal
    ) -> tuple[task_pb2.TaskState.ValueType, str]:
        runner = self.runner
        task_dir = f"/tasks/{self.task_id}"
        sandbox_note = f" in sandbox {self.spec.sandbox_id}" if self.managed is not None else ""
        self._emit(
            started=task_pb2.TaskStarted(
                executor_id=runner.executor_id, task_dir=task_dir, host_task_dir=str(self.host_task_dir)
            )
        )
        journal.log(
            f"task {self.task_id} started on executor {runner.executor_id} "
            f"({runner.driver.name}){sandbox_note}; {len(self.spec.steps)} steps in {task_dir}"
        )
        runner.record(history_event(self.task_id, memory_pb2.HISTORY_KIND_TASK_STARTED, state="running"))
        self.log.info("task started", steps=len(self.spec.steps))

        stop_reason = ""  # why the remaining steps are skipped
        failure = ""
        # In a long-lived sandbox the quota is the sandbox's, over its whole /tasks.
        if self.managed is not None:
            quota_root = self.managed.host_tasks_dir
            disk_mb = SandboxLimits.resolve(self.settings, self.managed.spec.limits).disk_mb
        else:
            quota_root, disk_mb = self.host_task_dir, self.limits.disk_mb
        disk_watch = DiskWatch(
            quota_root,
            disk_mb,
            self.settings.sandbox_max_files,
            self.settings.disk_check_interval_seconds,
            self._over_quota,
        )
        disk_watch.start()
        try:
            for index, step in enumerate(self.spec.steps):
                if self.cancel_reason is not None:
                    stop_reason = stop_reason or f"the task was cancelled: {self.cancel_reason}"
                if stop_reason:
                    self._skip(journal, index, step, stop_reason)
                    continue
                state, error = await self._run_step(journal, index, step)
                if state == task_pb2.STEP_STATE_CANCELLED:
                    stop_reason = f"the task was cancelled: {self.cancel_reason}"
                elif state == task_pb2.STEP_STATE_FAILED:
                    if not step.continue_on_error or self._sandbox_error is not None:
                        failure = f"step {index} ({step_tool(step) or 'empty'}) failed: {error}"
                        stop_reason = f"step {index} failed"
        finally:
            await disk_watch.stop()
        if self.cancel_reason is not None:
            return task_pb2.TASK_STATE_CANCELLED, self.cancel_reason
        if failure:
            return task_pb2.TASK_STATE_FAILED, failure
        return task_pb2.TASK_STATE_COMPLETED, ""

    def _over_quota(self, message: str) -> None:
        """The disk watch found the task directory over its quota: stop the running step."""
        step_task = self._step_task
        if step_task is not None and not step_task.done() and self._quota_error is None:
            self._quota_error = message
            self.log.warning("stopping the running step", step=self._current_index, reason=message)
            step_task.cancel()

    async def _sandbox_for_task(self) -> Sandbox:
        if self._sandbox is None and self.managed is not None:
            self._sandbox = self.managed.sandbox
            self.desktop = self.managed.desktop
        if self._sandbox is None:
            if self.wants_desktop:
                self.host_run_dir = self.settings.run_dir_root / self.task_id
                self.runner.driver.prepare_run_dir(self.host_run_dir)
            config = SandboxConfig(
                task_id=self.task_id,
                host_task_dir=self.host_task_dir,
                limits=self.limits,
                network=self.spec.network,
                env=dict(self.spec.env),
                desktop=self.wants_desktop,
                host_run_dir=self.host_run_dir,
            )
            self._sandbox = await self.runner.driver.create(config)
            if self.wants_desktop and self.host_run_dir is not None:
                self.desktop = await start_desktop(self._sandbox, self.host_run_dir)
        return self._sandbox

    @property
    def step_env(self) -> dict[str, str]:
        return {"DISPLAY": self.desktop.display} if self.desktop is not None else {}

    def _timeout(self, step: task_pb2.Step) -> float:
        if step.HasField("timeout"):
            return _seconds(step.timeout)
        if self.spec.HasField("step_timeout"):
            return _seconds(self.spec.step_timeout)
        return self.settings.step_timeout_seconds

    def _skip(self, journal: TaskJournal, index: int, step: task_pb2.Step, reason: str) -> None:
        tool = step_tool(step)
        result = task_pb2.StepResult(
            index=index, tool=tool, state=task_pb2.STEP_STATE_SKIPPED, error=f"skipped: {reason}"
        )
        self._emit(step_finished=task_pb2.StepFinished(result=result))
        journal.log(f"step {index} {tool or 'empty'} skipped: {reason}")
        journal.record(
            {"step": index, "tool": tool, "action": describe_action(step), "status": "skipped",
             "exit_code": None, "stdout": "", "stderr": "", "error": result.error}
        )

    async def _run_step(
        self, journal: TaskJournal, index: int, step: task_pb2.Step
    ) -> tuple[task_pb2.StepState.ValueType, str]:
        tool = step_tool(step)
        action = describe_action(step)
        started_at, started = _now(), time.monotonic()
        self._emit(step_started=task_pb2.StepStarted(index=index, tool=tool))
        journal.log(f"step {index} {tool or 'empty'}: {action}")
        self.runner.record(
            history_event(self.task_id, memory_pb2.HISTORY_KIND_ACTION, step_index=index, tool=tool, action=action)
        )
        timeout = self._timeout(step)

        def on_output(stream: StreamName, data: str) -> None:
            self._emit(output=task_pb2.OutputChunk(index=index, stream=_STREAMS[stream], data=data))

        self._current_index = index
        self._quota_error = None
        self._step_task = asyncio.create_task(self._perform(step, tool, timeout, on_output))
        try:
            outcome = await self._step_task
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if (task is not None and task.cancelling()) or (self.cancel_reason is None and self._quota_error is None):
                raise
            if self.cancel_reason is None and self._quota_error is not None:
                outcome = _Outcome(
                    task_pb2.STEP_STATE_FAILED, ProcessResult(exit_code=None, killed=True), self._quota_error
                )
            else:
                outcome = _Outcome(task_pb2.STEP_STATE_CANCELLED, ProcessResult(exit_code=None), "cancelled")
        finally:
            self._step_task = None
        if self.cancel_reason is not None and outcome.state != task_pb2.STEP_STATE_COMPLETED:
            outcome.state, outcome.error = task_pb2.STEP_STATE_CANCELLED, f"cancelled: {self.cancel_reason}"

        r = outcome.result
        result = task_pb2.StepResult(
            index=index,
            tool=tool,
            state=outcome.state,
            stdout=r.stdout,
            stderr=r.stderr,
            stdout_truncated=r.stdout_truncated,
            stderr_truncated=r.stderr_truncated,
            error=outcome.error,
            timed_out=r.timed_out,
        )
        if r.exit_code is not None:
            result.exit_code = r.exit_code
        elif r.signal is not None:
            result.exit_code = -r.signal
        result.duration.FromNanoseconds(int((time.monotonic() - started) * 1e9))
        result.started_at.CopyFrom(started_at)
        result.finished_at.CopyFrom(_now())
        self._emit(step_finished=task_pb2.StepFinished(result=result))

        state_name = STEP_STATE_NAMES[outcome.state]
        exit_code = result.exit_code if result.HasField("exit_code") else None
        summary = f"step {index} {state_name} in {result.duration.ToTimedelta().total_seconds():.3f}s"
        if exit_code is not None:
            summary += f" (exit {exit_code})"
        if outcome.error:
            summary += f": {outcome.error}"
        journal.log(summary, stdout=r.stdout, stderr=r.stderr)
        journal.record(
            {"step": index, "tool": tool, "action": action, "status": state_name,
             "exit_code": exit_code, "stdout": r.stdout, "stderr": r.stderr, "error": outcome.error}
        )
        self.runner.record(
            history_event(
                self.task_id, memory_pb2.HISTORY_KIND_RESULT, step_index=index, tool=tool,
                action=action, state=state_name, exit_code=exit_code, stdout=r.stdout,
                stderr=r.stderr, error=outcome.error,
            )
        )
        return outcome.state, outcome.error

    async def _perform(
        self, step: task_pb2.Step, tool: str, timeout: float, on_output: OutputCallback
    ) -> _Outcome:
        """Does the step's work; every failure becomes a FAILED outcome with words."""
        failed = task_pb2.STEP_STATE_FAILED
        if not tool:
            return _Outcome(failed, ProcessResult(exit_code=None), "the step has no action")
        if timeout > self.settings.max_step_timeout_seconds:
            return _Outcome(
                failed,
                ProcessResult(exit_code=None),
                f"timeout {timeout:g}s exceeds this executor's maximum of "
                f"{self.settings.max_step_timeout_seconds:g}s",
            )
        try:
            sandbox = await self._sandbox_for_task()
            if tool in PROCESS_TOOLS:
                code = step.shell.command if tool == "shell" else getattr(step, tool).code
                request = ProcessRequest(
                    kind=PROCESS_TOOLS[tool], timeout=timeout, code=code, env=self.step_env, cwd=self.cwd
                )
                result = await sandbox.run(request, on_output)
                error = describe_failure(result, self.limits, timeout, tool)
                state = task_pb2.STEP_STATE_COMPLETED if result.ok else failed
                return _Outcome(state, result, error)
            if tool == "gui":
                return await self._gui_step(step, timeout, on_output)
            return await asyncio.wait_for(self._file_step(sandbox, step, tool, on_output), timeout)
        except (FileRefused, GuiStepError) as exc:
            return _Outcome(failed, ProcessResult(exit_code=None), str(exc))
        except TimeoutError:
            return _Outcome(
                failed, ProcessResult(exit_code=None, timed_out=True), f"timed out after {timeout:g}s"
            )
        except SandboxError as exc:
            self._sandbox_error = exc
            return _Outcome(failed, ProcessResult(exit_code=None), str(exc))

    async def _gui_step(self, step: task_pb2.Step, timeout: float, on_output: OutputCallback) -> _Outcome:
        if self.desktop is None:
            raise GuiStepError(
                f"sandbox {self.spec.sandbox_id} has no desktop (create it with desktop: true)"
                if self.managed is not None
                else "this sandbox has no desktop"
            )
        if self._gui is None:
            self._gui = GuiClient(self.desktop.gui_socket)
        writer = ScreenshotWriter(self.host_task_dir, f"/tasks/{self.task_id}")
        index = self._current_index
        outcome = await perform(self._gui, step.gui, writer, index, timeout)
        on_output("stdout", outcome.stdout)
        return _Outcome(task_pb2.STEP_STATE_COMPLETED, ProcessResult(exit_code=None, stdout=outcome.stdout), "")

    async def _file_step(
        self, sandbox: Sandbox, step: task_pb2.Step, tool: str, on_output: OutputCallback
    ) -> _Outcome:
        if tool == "read_file":
            content = await sandbox.read_file(
                step.read_file.path, self.settings.max_read_file_bytes, cwd=self.cwd
            )
            if content:
                on_output("stdout", content)
            return _Outcome(task_pb2.STEP_STATE_COMPLETED, ProcessResult(exit_code=None, stdout=content), "")
        content = step.write_file.content
        path = await sandbox.write_file(
            step.write_file.path, content, self.settings.max_write_file_bytes, cwd=self.cwd
        )
        message = f"wrote {len(content.encode())} bytes to {path}\n"
        return _Outcome(task_pb2.STEP_STATE_COMPLETED, ProcessResult(exit_code=None, stdout=message), "")


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
        if not spec.steps:
            raise InvalidTask("the task has no steps")
        problem = limits_problem(spec.limits, self.settings)
        if problem:
            raise InvalidTask(problem)
        if task_id in self._runs:
            raise AlreadyRunning(f"task {task_id} is already running on this executor")
        if len(self._runs) >= self.capacity:
            raise AtCapacity(f"executor {self.executor_id} is at capacity ({self.capacity} tasks)")
        run = TaskRun(self, task_id, spec)
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
