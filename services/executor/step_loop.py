"""A task's steps, in order, and the policy around them.

- A failed step skips the rest, unless it set continue_on_error (a failed sandbox skips the
  rest whatever the step said: nothing more can run there).
- Every step has a timeout: its own, else the task's step_timeout, else the executor's default.
- Cancelling the task stops the running step (reported `cancelled`) and skips the rest.
- The disk watch can stop the running step (reported `failed` with the quota's words).
Each step's work is its tool's `run` (corral/steps) with an ExecutorStepContext.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from corral.config import Settings
from corral.service_metrics import STEP_SECONDS
from corral.steps import StepFailed, StepOutcome, step_tool, tool_of
from corral.v1 import task_pb2
from services.executor.disk_quota import DiskWatch
from services.executor.drivers.base import FileRefused, OutputCallback, SandboxError, StreamName
from services.executor.lease import SandboxLease
from services.executor.recorder import TaskRecorder, now
from services.executor.step_context import ExecutorStepContext

# The state label of a step's duration.
STEP_STATES = {
    task_pb2.STEP_STATE_COMPLETED: "completed",
    task_pb2.STEP_STATE_FAILED: "failed",
    task_pb2.STEP_STATE_CANCELLED: "cancelled",
}


class StepLoop:
    def __init__(
        self,
        settings: Settings,
        spec: task_pb2.TaskSpec,
        lease: SandboxLease,
        recorder: TaskRecorder,
    ) -> None:
        self.settings = settings
        self.spec = spec
        self.lease = lease
        self.recorder = recorder
        self.cancel_reason: str | None = None
        self._step_task: asyncio.Task[StepOutcome] | None = None
        self._current_index = 0
        # Set when the sandbox itself failed: no later step can run, continue_on_error or not.
        self._sandbox_error: SandboxError | None = None
        # Why the disk watch stopped the running step (reset at each step).
        self._quota_error: str | None = None
        self._disk_watch: DiskWatch | None = None
        self.log = structlog.get_logger().bind(task_id=recorder.task_id)

    # --- control ---------------------------------------------------------------------------

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason or "cancelled"
        if self._step_task is not None:
            self._step_task.cancel()

    def _over_quota(self, message: str) -> None:
        """The disk watch found the task directory over its quota: stop the running step."""
        step_task = self._step_task
        if step_task is not None and not step_task.done() and self._quota_error is None:
            self._quota_error = message
            self.log.warning("stopping the running step", step=self._current_index, reason=message)
            step_task.cancel()

    def timeout_of(self, step: task_pb2.Step) -> float:
        if step.HasField("timeout"):
            return step.timeout.ToTimedelta().total_seconds()
        if self.spec.HasField("step_timeout"):
            return self.spec.step_timeout.ToTimedelta().total_seconds()
        return self.settings.step_timeout_seconds

    # --- the loop --------------------------------------------------------------------------

    async def run(self) -> tuple[task_pb2.TaskState.ValueType, str]:
        """Runs every step; returns the task's state and, unless completed, why."""
        stop_reason = ""  # why the remaining steps are skipped
        failure = ""
        self._disk_watch = disk_watch = DiskWatch(
            self.lease.quota,
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
                    self.recorder.skipped(index, step, stop_reason)
                    continue
                state, error = await self._run_step(index, step)
                if state == task_pb2.STEP_STATE_CANCELLED:
                    stop_reason = f"the task was cancelled: {self.cancel_reason}"
                elif state == task_pb2.STEP_STATE_FAILED:
                    if not step.continue_on_error or self._sandbox_error is not None:
                        failure = f"step {index + 1} ({step_tool(step) or 'empty'}) failed: {error}"
                        stop_reason = f"step {index + 1} failed"
        finally:
            await disk_watch.stop()
        if self.cancel_reason is not None:
            return task_pb2.TASK_STATE_CANCELLED, self.cancel_reason
        if failure:
            return task_pb2.TASK_STATE_FAILED, failure
        return task_pb2.TASK_STATE_COMPLETED, ""

    async def _run_step(self, index: int, step: task_pb2.Step) -> tuple[task_pb2.StepState.ValueType, str]:
        started_at, started = now(), time.monotonic()
        self.recorder.step_started(index, step)

        def on_output(stream: StreamName, data: str) -> None:
            self.recorder.output(index, stream, data)

        self._current_index = index
        self._quota_error = None
        self._step_task = asyncio.create_task(self._perform(index, step, on_output))
        state: task_pb2.StepState.ValueType
        try:
            outcome = await self._step_task
            state = task_pb2.STEP_STATE_COMPLETED if outcome.ok else task_pb2.STEP_STATE_FAILED
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if (task is not None and task.cancelling()) or (self.cancel_reason is None and self._quota_error is None):
                raise
            if self.cancel_reason is None and self._quota_error is not None:
                outcome, state = StepOutcome.failed(self._quota_error), task_pb2.STEP_STATE_FAILED
            else:
                outcome, state = StepOutcome.failed("cancelled"), task_pb2.STEP_STATE_CANCELLED
        finally:
            self._step_task = None
        if state == task_pb2.STEP_STATE_FAILED and self._quota_error is None and self._disk_watch is not None:
            # A write failed with ENOSPC before the watch looked: say why in the quota's words.
            outcome.error = await self._disk_watch.check_now() or outcome.error
        if self.cancel_reason is not None and state != task_pb2.STEP_STATE_COMPLETED:
            state, outcome.error = task_pb2.STEP_STATE_CANCELLED, f"cancelled: {self.cancel_reason}"
        refused = await self.lease.newly_refused_connections()
        if refused:
            self.recorder.network_refused(
                f"{refused} connection attempt{'s' if refused > 1 else ''} refused during step {index + 1}"
            )
        duration = time.monotonic() - started
        self.recorder.step_finished(index, step, state, outcome, started_at, duration, self.settings.output_preview_bytes)
        STEP_SECONDS.labels(step_tool(step) or "empty", STEP_STATES.get(state, "unknown")).observe(duration)
        return state, outcome.error

    async def _perform(self, index: int, step: task_pb2.Step, on_output: OutputCallback) -> StepOutcome:
        """Does the step's work; every failure becomes a failed outcome with words."""
        found = tool_of(step)
        if found is None:
            return StepOutcome.failed("the step has no action")
        tool, action = found
        timeout = self.timeout_of(step)
        context = ExecutorStepContext(self.settings, self.lease, index, timeout, on_output)
        try:
            return await tool.run(action, context)
        except (StepFailed, FileRefused) as exc:
            return StepOutcome.failed(str(exc))
        except TimeoutError:
            return StepOutcome.failed(f"timed out after {timeout:g}s", timed_out=True)
        except SandboxError as exc:
            self._sandbox_error = exc
            return StepOutcome.failed(str(exc))
