"""The JSON shape of tasks (REST and CLI) and its translation to and from the protos.

The step format is the one DESIGN.md §1 promises: {"tool": "shell", "command": "..."} and so
on; each tool's model lives with the tool in corral/steps/. Pydantic validates it, which gives
clear messages naming the bad field and an OpenAPI schema for free.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import duration_pb2
from pydantic import BaseModel, ConfigDict, Field

from corral.bounds import INT32_MAX, INT64_MAX, MAX_STEP_TIMEOUT_SECONDS
from corral.network_json import NETWORK_DESCRIPTION, NetworkField, network_to_proto
from corral.steps import StepModel, step_to_proto
from corral.v1 import task_pb2
from corral.views import STEP_STATE_NAMES as STEP_STATE_NAMES
from corral.views import TASK_STATE_NAMES as TASK_STATE_NAMES
from corral.views import TASK_STATES_BY_NAME as TASK_STATES_BY_NAME
from corral.views import TaskView, event_view

TERMINAL_TASK_STATES = frozenset(
    {task_pb2.TASK_STATE_COMPLETED, task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_CANCELLED}
)


def seconds_to_duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


class LimitsModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # At most what the proto's int64/int32 carry; the deployment's maximums are checked after.
    memory_mb: int = Field(0, ge=0, le=INT64_MAX, description="Memory limit, MiB (0: default; else at least 64).")
    max_processes: int = Field(
        0, ge=0, le=INT32_MAX, description="Processes in the sandbox (0: default; else at least 8)."
    )
    max_file_size_mb: int = Field(0, ge=0, le=INT64_MAX, description="Largest file written, MiB (0: default).")
    max_output_bytes: int = Field(0, ge=0, le=INT64_MAX, description="stdout/stderr kept per step (0: default).")
    disk_mb: int = Field(0, ge=0, le=INT64_MAX, description="Most the task directory may hold, MiB (0: default).")


class TaskRequest(BaseModel):
    """A task as clients send it: POST /schedule, POST /v1/tasks, `corral run -f`."""

    model_config = ConfigDict(extra="forbid")

    steps: list[StepModel] = Field(min_length=1, max_length=1000)
    step_timeout: float | None = Field(
        None,
        gt=0,
        le=MAX_STEP_TIMEOUT_SECONDS,
        allow_inf_nan=False,
        description="Default timeout of every step, seconds (60 if unset; at most a week, and at most "
        "the deployment's CORRAL_MAX_STEP_TIMEOUT_SECONDS).",
    )
    network: NetworkField = Field(False, description=NETWORK_DESCRIPTION)
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    limits: LimitsModel | None = None
    sandbox_id: str | None = Field(
        None, description="Run in this long-lived sandbox (POST /v1/sandboxes) instead of a new one."
    )
    desktop: bool = Field(False, description="Give the task's sandbox a desktop (gui steps imply it).")

    def to_proto(self) -> task_pb2.TaskSpec:
        network, rules = network_to_proto(self.network)
        spec = task_pb2.TaskSpec(
            network=network, network_rules=rules, env=self.env, sandbox_id=self.sandbox_id or "", desktop=self.desktop
        )
        if self.step_timeout is not None:
            spec.step_timeout.CopyFrom(seconds_to_duration(self.step_timeout))
        if self.limits is not None:
            spec.limits.CopyFrom(task_pb2.Limits(**self.limits.model_dump()))
        for step in self.steps:
            spec.steps.append(step_to_proto(step))
        return spec


def task_to_json(task: task_pb2.Task) -> dict[str, Any]:
    """The status document of GET /status and /v1/tasks/{id} (corral.views.TaskView)."""
    return TaskView.from_proto(task).to_json()


def event_to_json(event: task_pb2.TaskEvent) -> dict[str, Any]:
    """One TaskEvent as the SSE stream and `corral run` show it (corral.views.TaskEventView)."""
    return event_view(event).to_json()
