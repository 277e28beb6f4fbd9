"""The JSON shape of tasks (REST and CLI) and its translation to and from the protos.

The step format is the one DESIGN.md §1 promises: {"tool": "shell", "command": "..."} and so
on; each tool's model lives with the tool in corral/steps/. Pydantic validates it, which gives
clear messages naming the bad field and an OpenAPI schema for free.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import duration_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, ConfigDict, Field

from corral.steps import TOOL_NAMES, StepModel, step_to_proto
from corral.v1 import task_pb2

# The tool names, for code that only needs those (the registry is corral.steps).
TOOLS = TOOL_NAMES

TASK_STATE_NAMES = {
    task_pb2.TASK_STATE_UNSPECIFIED: "unspecified",
    task_pb2.TASK_STATE_SCHEDULED: "scheduled",
    task_pb2.TASK_STATE_RUNNING: "running",
    task_pb2.TASK_STATE_COMPLETED: "completed",
    task_pb2.TASK_STATE_FAILED: "failed",
    task_pb2.TASK_STATE_CANCELLED: "cancelled",
}
TASK_STATES_BY_NAME = {name: value for value, name in TASK_STATE_NAMES.items()}
TERMINAL_TASK_STATES = frozenset(
    {task_pb2.TASK_STATE_COMPLETED, task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_CANCELLED}
)

STEP_STATE_NAMES = {
    task_pb2.STEP_STATE_UNSPECIFIED: "unspecified",
    task_pb2.STEP_STATE_PENDING: "pending",
    task_pb2.STEP_STATE_RUNNING: "running",
    task_pb2.STEP_STATE_COMPLETED: "completed",
    task_pb2.STEP_STATE_FAILED: "failed",
    task_pb2.STEP_STATE_SKIPPED: "skipped",
    task_pb2.STEP_STATE_CANCELLED: "cancelled",
}


def seconds_to_duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


class LimitsModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    memory_mb: int = Field(0, ge=0, description="Address space per process, MiB (0: default).")
    max_processes: int = Field(0, ge=0, description="Processes in the sandbox (0: default).")
    max_file_size_mb: int = Field(0, ge=0, description="Largest file written, MiB (0: default).")
    max_output_bytes: int = Field(0, ge=0, description="stdout/stderr kept per step (0: default).")
    disk_mb: int = Field(0, ge=0, description="Most the task directory may hold, MiB (0: default).")


class TaskRequest(BaseModel):
    """A task as clients send it: POST /schedule, POST /v1/tasks, `corral run -f`."""

    model_config = ConfigDict(extra="forbid")

    steps: list[StepModel] = Field(min_length=1, max_length=1000)
    step_timeout: float | None = Field(
        None, gt=0, description="Default timeout of every step, seconds (60 if unset)."
    )
    network: bool = Field(False, description="Give the sandbox network access.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    limits: LimitsModel | None = None
    sandbox_id: str | None = Field(
        None, description="Run in this long-lived sandbox (POST /v1/sandboxes) instead of a new one."
    )
    desktop: bool = Field(False, description="Give the task's sandbox a desktop (gui steps imply it).")

    def to_proto(self) -> task_pb2.TaskSpec:
        spec = task_pb2.TaskSpec(
            network=self.network, env=self.env, sandbox_id=self.sandbox_id or "", desktop=self.desktop
        )
        if self.step_timeout is not None:
            spec.step_timeout.CopyFrom(seconds_to_duration(self.step_timeout))
        if self.limits is not None:
            spec.limits.CopyFrom(task_pb2.Limits(**self.limits.model_dump()))
        for step in self.steps:
            spec.steps.append(step_to_proto(step))
        return spec


def _time(ts: Timestamp, present: bool) -> str | None:
    return ts.ToJsonString() if present else None


def step_result_to_json(result: task_pb2.StepResult) -> dict[str, Any]:
    return {
        "index": result.index,
        "tool": result.tool,
        "status": STEP_STATE_NAMES.get(result.state, "unspecified"),
        "exit_code": result.exit_code if result.HasField("exit_code") else None,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "stdout_truncated": result.stdout_truncated,
        "stderr_truncated": result.stderr_truncated,
        "timed_out": result.timed_out,
        "duration_seconds": round(result.duration.ToNanoseconds() / 1e9, 6),
        "error": result.error or None,
        "started_at": _time(result.started_at, result.HasField("started_at")),
        "finished_at": _time(result.finished_at, result.HasField("finished_at")),
    }


def task_to_json(task: task_pb2.Task) -> dict[str, Any]:
    """The status document of GET /status and /v1/tasks/{id}."""
    return {
        "task_id": task.task_id,
        "status": TASK_STATE_NAMES.get(task.state, "unspecified"),
        "error": task.error or None,
        "steps": [step_result_to_json(s) for s in task.steps],
        "executor_id": task.executor_id or None,
        "task_dir": task.task_dir or None,
        "sandbox_id": task.spec.sandbox_id or None,
        "log_path": task.log_path or None,
        "host_log_path": task.host_log_path or None,
        "created_at": _time(task.created_at, task.HasField("created_at")),
        "started_at": _time(task.started_at, task.HasField("started_at")),
        "finished_at": _time(task.finished_at, task.HasField("finished_at")),
    }


def event_to_json(event: task_pb2.TaskEvent) -> dict[str, Any]:
    """One TaskEvent as the SSE stream and `corral run` show it."""
    kind = event.WhichOneof("event") or "unknown"
    body: dict[str, Any] = {"task_id": event.task_id, "sequence": event.sequence, "type": kind}
    if event.HasField("time"):
        body["time"] = event.time.ToJsonString()
    if kind == "started":
        body["executor_id"] = event.started.executor_id
        body["task_dir"] = event.started.task_dir
    elif kind == "step_started":
        body["index"] = event.step_started.index
        body["tool"] = event.step_started.tool
    elif kind == "output":
        body["index"] = event.output.index
        body["stream"] = "stderr" if event.output.stream == task_pb2.OUTPUT_STREAM_STDERR else "stdout"
        body["data"] = event.output.data
    elif kind == "step_finished":
        body["result"] = step_result_to_json(event.step_finished.result)
    elif kind == "finished":
        body["status"] = TASK_STATE_NAMES.get(event.finished.state, "unspecified")
        body["error"] = event.finished.error or None
    return body
