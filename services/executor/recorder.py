"""Everything a task leaves behind, written in one place: its events (streamed to the scheduler),
agent.log and memory.json (TaskJournal, in the task directory) and its history (memory service).

The step loop says what happened (`step_started`, `step_finished`, `skipped`...); the recorder
turns each into the TaskEvent, the journal entries and the history event, so those three can
never disagree.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from corral.output_preview import clip_result, pieces
from corral.schema import STEP_STATE_NAMES, TASK_STATE_NAMES
from corral.steps import StepOutcome, describe, step_tool
from corral.v1 import memory_pb2, task_pb2
from services.executor.drivers.base import StreamName
from services.executor.history import history_event
from services.executor.journal import TaskJournal

_STREAMS: dict[StreamName, task_pb2.OutputStream.ValueType] = {
    "stdout": task_pb2.OUTPUT_STREAM_STDOUT,
    "stderr": task_pb2.OUTPUT_STREAM_STDERR,
}


# Refused lookups reported one by one per task; past this a step looping on a denied name
# would flood the event log, so the rest are only counted (network_status, /metrics).
MAX_NETWORK_EVENTS = 50


def now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


class TaskRecorder:
    def __init__(
        self,
        task_id: str,
        emit: Callable[[task_pb2.TaskEvent], None],
        record_history: Callable[[memory_pb2.HistoryEvent, bool], None],
    ) -> None:
        self.task_id = task_id
        self._emit_event = emit
        self._history = record_history
        self.journal: TaskJournal | None = None
        self.log = structlog.get_logger().bind(task_id=task_id)
        self._network_events = 0

    def _emit(self, **payload: object) -> None:
        event = task_pb2.TaskEvent(task_id=self.task_id, **payload)  # type: ignore[arg-type]
        event.time.CopyFrom(now())
        self._emit_event(event)

    def _journal_log(self, line: str, stdout: str = "", stderr: str = "") -> None:
        if self.journal is not None:
            self.journal.log(line, stdout=stdout, stderr=stderr)

    def _journal_record(self, index: int, action: str, state: str, result: task_pb2.StepResult) -> None:
        if self.journal is not None:
            exit_code = result.exit_code if result.HasField("exit_code") else None
            self.journal.record(
                {"step": index, "tool": result.tool, "action": action, "status": state,
                 "exit_code": exit_code, "stdout": result.stdout, "stderr": result.stderr,
                 "error": result.error}
            )

    # --- the task --------------------------------------------------------------------------

    def task_started(self, executor_id: str, driver: str, task_dir: str, where: str, steps: int) -> None:
        self._emit(started=task_pb2.TaskStarted(executor_id=executor_id, task_dir=task_dir))
        self._journal_log(
            f"task {self.task_id} started on executor {executor_id} ({driver}){where}; "
            f"{steps} steps in {task_dir}"
        )
        self._history(history_event(self.task_id, memory_pb2.HISTORY_KIND_TASK_STARTED, state="running"), True)
        self.log.info("task started", steps=steps)

    def finish_journal(self, state: task_pb2.TaskState.ValueType, error: str) -> None:
        """The journal's last line (once); it lets go of the task directory."""
        if self.journal is not None and not self.journal.closed:
            self.journal.log(f"task {TASK_STATE_NAMES[state]}" + (f": {error}" if error else ""))
            self.journal.close()

    def task_finished(self, state: task_pb2.TaskState.ValueType, error: str) -> None:
        name = TASK_STATE_NAMES[state]
        self.finish_journal(state, error)
        # Not batched: it sends the task's entries waiting for it (HistoryRecorder.record).
        self._history(
            history_event(self.task_id, memory_pb2.HISTORY_KIND_TASK_FINISHED, state=name, error=error), False
        )
        self._emit(finished=task_pb2.TaskFinished(state=state, error=error))
        self.log.info("task finished", state=name, error=error or None)

    def network_refused(self, description: str) -> None:
        """The sandbox's network refused something (a lookup of a denied name)."""
        self._network_events += 1
        if self._network_events > MAX_NETWORK_EVENTS + 1:
            return
        if self._network_events == MAX_NETWORK_EVENTS + 1:
            description = f"more refused by the network; past {MAX_NETWORK_EVENTS} they are only counted"
        self._emit(network_refused=task_pb2.NetworkRefused(description=description))
        self._journal_log(f"network: {description}")
        self._history(
            history_event(self.task_id, memory_pb2.HISTORY_KIND_NETWORK_REFUSED, action=description), True
        )

    # --- steps -----------------------------------------------------------------------------

    def step_started(self, index: int, step: task_pb2.Step) -> None:
        tool, action = step_tool(step), describe(step)
        self._emit(step_started=task_pb2.StepStarted(index=index, tool=tool))
        self._journal_log(f"step {index} {tool or 'empty'}: {action}")
        self._history(
            history_event(
                self.task_id, memory_pb2.HISTORY_KIND_ACTION, step_index=index, tool=tool, action=action
            ),
            True,
        )

    def output(self, index: int, stream: StreamName, data: str) -> None:
        # In pieces: a tool may hand over a whole file's content at once.
        for piece in pieces(data):
            self._emit(output=task_pb2.OutputChunk(index=index, stream=_STREAMS[stream], data=piece))

    def step_finished(
        self,
        index: int,
        step: task_pb2.Step,
        state: task_pb2.StepState.ValueType,
        outcome: StepOutcome,
        started_at: Timestamp,
        duration_seconds: float,
        preview_bytes: int,
    ) -> None:
        """The step's end; its result (event, history) carries at most `preview_bytes` of each
        output stream: the whole output went out as its `output` events."""
        tool, action = step_tool(step), describe(step)
        result = task_pb2.StepResult(
            index=index,
            tool=tool,
            state=state,
            stdout_truncated=outcome.stdout_truncated,
            stderr_truncated=outcome.stderr_truncated,
            error=outcome.error,
            timed_out=outcome.timed_out,
        )
        clip_result(result, outcome.stdout, outcome.stderr, preview_bytes)
        if outcome.exit_code is not None:
            result.exit_code = outcome.exit_code
        result.duration.FromNanoseconds(int(duration_seconds * 1e9))
        result.started_at.CopyFrom(started_at)
        result.finished_at.CopyFrom(now())
        self._emit(step_finished=task_pb2.StepFinished(result=result))

        state_name = STEP_STATE_NAMES[state]
        exit_code = outcome.exit_code
        summary = f"step {index} {state_name} in {duration_seconds:.3f}s"
        if exit_code is not None:
            summary += f" (exit {exit_code})"
        if outcome.error:
            summary += f": {outcome.error}"
        self._journal_log(summary, stdout=outcome.stdout, stderr=outcome.stderr)
        self._journal_record(index, action, state_name, result)
        self._history(
            history_event(
                self.task_id, memory_pb2.HISTORY_KIND_RESULT, step_index=index, tool=tool,
                action=action, state=state_name, exit_code=exit_code, stdout=result.stdout,
                stderr=result.stderr, error=outcome.error,
            ),
            True,
        )

    def skipped(self, index: int, step: task_pb2.Step, reason: str) -> None:
        tool = step_tool(step)
        result = task_pb2.StepResult(
            index=index, tool=tool, state=task_pb2.STEP_STATE_SKIPPED, error=f"skipped: {reason}"
        )
        self._emit(step_finished=task_pb2.StepFinished(result=result))
        self._journal_log(f"step {index} {tool or 'empty'} skipped: {reason}")
        self._journal_record(index, describe(step), "skipped", result)
