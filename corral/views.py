"""The JSON documents Corral sends out (REST gateway, `corral run/status --json`), as pydantic
models built from the protos.

One model per document: the gateway declares these as its response models and renders its
responses through them, so /openapi.json shows exactly what is sent; the CLI prints the same
documents. Field order is the documents' key order (the seed's GET /status keeps its shape).
Fields that are left out when unset (rather than null) say so in their description.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast, get_args

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, ConfigDict, Field

from corral.enums import enum_names
from corral.network_json import NETWORK_DESCRIPTION, NetworkField, NetworkStatusView, network_of
from corral.steps import TOOL_NAMES
from corral.v1 import memory_pb2, sandbox_pb2, task_pb2

# --- enum names (one table per proto enum) -----------------------------------------------

TaskStatus = Literal["scheduled", "running", "completed", "failed", "cancelled"]
StepStatus = Literal["pending", "running", "completed", "failed", "skipped", "cancelled"]
SandboxStatus = Literal["active", "deleted", "expired", "failed"]
# The memory service stores whatever kind a writer sends, so "unspecified" can come back.
HistoryKind = Literal["unspecified", "task_started", "action", "result", "task_finished", "network_refused"]
OutputStreamName = Literal["stdout", "stderr"]

TASK_STATE_NAMES = enum_names(task_pb2.TaskState, "TASK_STATE_")
STEP_STATE_NAMES = enum_names(task_pb2.StepState, "STEP_STATE_")
SANDBOX_STATE_NAMES = enum_names(sandbox_pb2.SandboxState, "SANDBOX_STATE_")
HISTORY_KIND_NAMES = enum_names(memory_pb2.HistoryKind, "HISTORY_KIND_")
# The task states a client may filter a listing by.
LISTABLE_TASK_STATES: tuple[str, ...] = get_args(TaskStatus)
TASK_STATES_BY_NAME = {name: cast(task_pb2.TaskState.ValueType, value) for value, name in TASK_STATE_NAMES.items()}


def _time(ts: Timestamp, present: bool) -> str | None:
    return ts.ToJsonString() if present else None


def _absent(value: object) -> bool:
    return value is None


class View(BaseModel):
    """A document sent out; `to_json()` is what goes on the wire."""

    model_config = ConfigDict(extra="forbid")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --- tasks --------------------------------------------------------------------------------


class ScheduleResponse(View):
    task_id: str


class StepView(View):
    index: int
    tool: str = Field(description=" | ".join(TOOL_NAMES))
    status: StepStatus
    exit_code: int | None = Field(description="Unset for file and gui steps; -N when killed by signal N.")
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    duration_seconds: float
    error: str | None
    started_at: str | None
    finished_at: str | None
    # Last, after the seed's fields (which keep their order).
    stdout_clipped: bool = Field(
        False,
        description="stdout is only the first part of the step's output (a preview; listings carry "
        "none): the whole is at /v1/tasks/{task_id}/steps/{index}/output?stream=stdout.",
    )
    stderr_clipped: bool = Field(False, description="As stdout_clipped, for stderr.")
    stdout_bytes: int = Field(0, description="Size in bytes (UTF-8) of the step's whole stdout.")
    stderr_bytes: int = Field(0, description="Size in bytes (UTF-8) of the step's whole stderr.")

    @classmethod
    def from_proto(cls, result: task_pb2.StepResult) -> StepView:
        return cls.model_validate(
            {
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
                "stdout_clipped": result.stdout_clipped,
                "stderr_clipped": result.stderr_clipped,
                "stdout_bytes": result.stdout_bytes or len(result.stdout.encode()),
                "stderr_bytes": result.stderr_bytes or len(result.stderr.encode()),
            }
        )


class TaskView(View):
    """The status document of GET /status and /v1/tasks/{id}."""

    task_id: str
    status: TaskStatus
    error: str | None = Field(description="Why the task failed or was cancelled.")
    steps: list[StepView]
    executor_id: str | None
    task_dir: str | None = Field(description="/tasks/{task_id} inside the sandbox.")
    sandbox_id: str | None = Field(description="The long-lived sandbox it runs in, if any.")
    log_path: str | None = Field(description="agent.log inside the sandbox.")
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    # Last, after the seed's fields (which keep their order).
    tenant_id: str | None = Field(None, description="The tenant that owns it (its API key's).")
    network: NetworkField = Field(False, description=NETWORK_DESCRIPTION)
    summary: str | None = Field(
        None, description="What it runs, in a few words: its first step's command, code or path "
        "(first line, shortened), for listings such as `corral ls`.",
    )

    @classmethod
    def from_proto(cls, task: task_pb2.Task) -> TaskView:
        return cls.model_validate(
            {
                "task_id": task.task_id,
                "status": TASK_STATE_NAMES.get(task.state, "unspecified"),
                "error": task.error or None,
                "steps": [StepView.from_proto(s) for s in task.steps],
                "executor_id": task.executor_id or None,
                "task_dir": task.task_dir or None,
                "sandbox_id": task.spec.sandbox_id or None,
                "log_path": task.log_path or None,
                "created_at": _time(task.created_at, task.HasField("created_at")),
                "started_at": _time(task.started_at, task.HasField("started_at")),
                "finished_at": _time(task.finished_at, task.HasField("finished_at")),
                "tenant_id": task.tenant_id or None,
                "network": network_of(task.spec.network, task.spec.network_rules),
                "summary": _summary(task.spec.steps[0]) if task.spec.steps else None,
            }
        )


def _summary(step: task_pb2.Step) -> str:
    kind = step.WhichOneof("action") or ""
    action = getattr(step, kind) if kind else None
    text = ""
    for name in ("command", "code", "path", "action"):
        value = getattr(action, name, "") if action is not None else ""
        if isinstance(value, str) and value.strip():
            text = value.strip().splitlines()[0]
            break
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{kind}: {text}" if text else kind


class TaskList(View):
    tasks: list[TaskView]
    next_page_token: str | None = Field(description="Pass as ?page_token= for the next page.")


# --- task events (SSE data, `corral run --json`) ------------------------------------------


class _EventBase(View):
    task_id: str
    sequence: int
    type: str
    time: str | None = Field(None, exclude_if=_absent, description="Left out when unknown.")


class ScheduledEvent(_EventBase):
    type: Literal["scheduled"]


class StartedEvent(_EventBase):
    type: Literal["started"]
    executor_id: str
    task_dir: str


class StepStartedEvent(_EventBase):
    type: Literal["step_started"]
    index: int
    tool: str


class OutputEvent(_EventBase):
    type: Literal["output"]
    index: int
    stream: OutputStreamName
    data: str


class StepFinishedEvent(_EventBase):
    type: Literal["step_finished"]
    result: StepView


class FinishedEvent(_EventBase):
    type: Literal["finished"]
    status: TaskStatus
    error: str | None


class NetworkRefusedEvent(_EventBase):
    """The sandbox's network refused a lookup (connections refused are counted: GET the
    sandbox, /metrics)."""

    type: Literal["network_refused"]
    description: str


class UnknownEvent(_EventBase):
    """An event kind newer than this gateway."""

    type: Literal["unknown"]


TaskEventView = Annotated[
    ScheduledEvent
    | StartedEvent
    | StepStartedEvent
    | OutputEvent
    | StepFinishedEvent
    | FinishedEvent
    | NetworkRefusedEvent
    | UnknownEvent,
    Field(discriminator="type"),
]
EVENT_MODELS: dict[str, type[_EventBase]] = {
    "scheduled": ScheduledEvent,
    "started": StartedEvent,
    "step_started": StepStartedEvent,
    "output": OutputEvent,
    "step_finished": StepFinishedEvent,
    "finished": FinishedEvent,
    "network_refused": NetworkRefusedEvent,
}


def event_view(event: task_pb2.TaskEvent) -> _EventBase:
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
        body["result"] = StepView.from_proto(event.step_finished.result)
    elif kind == "finished":
        body["status"] = TASK_STATE_NAMES.get(event.finished.state, "unspecified")
        body["error"] = event.finished.error or None
    elif kind == "network_refused":
        body["description"] = event.network_refused.description
    return EVENT_MODELS.get(kind, UnknownEvent).model_validate(body)


# --- history (memory) ---------------------------------------------------------------------


class HistoryEventView(View):
    task_id: str
    sequence: int
    time: str | None
    kind: HistoryKind
    step_index: int | None
    tool: str | None
    action: str
    state: str | None
    exit_code: int | None
    stdout: str
    stderr: str
    error: str | None

    @classmethod
    def from_proto(cls, event: memory_pb2.HistoryEvent) -> HistoryEventView:
        return cls.model_validate(
            {
                "task_id": event.task_id,
                "sequence": event.sequence,
                "time": event.time.ToJsonString() if event.HasField("time") else None,
                "kind": HISTORY_KIND_NAMES.get(event.kind, "unspecified"),
                "step_index": event.step_index if event.step_index >= 0 else None,
                "tool": event.tool or None,
                "action": event.action,
                "state": event.state or None,
                "exit_code": event.exit_code if event.HasField("exit_code") else None,
                "stdout": event.stdout,
                "stderr": event.stderr,
                "error": event.error or None,
            }
        )


class HistoryResponse(View):
    task_id: str
    events: list[HistoryEventView]
    next_after: int = Field(description="Pass as ?after= to get the events that follow.")
    complete: bool = Field(
        False,
        description="The history holds the task's final entry (task_finished): nothing more will be added.",
    )
    delivering: bool = Field(
        False,
        description="The task has ended but its executor has not delivered all of its history to the "
        "memory service yet (it was unreachable; the executor keeps what it missed and sends it when "
        "it is back): ask again for the rest. false once complete, and for a task whose executor is "
        "gone (its history stays as it is).",
    )


class SearchHitView(View):
    task_id: str
    sequence: int
    snippet: str
    event: HistoryEventView


class SearchResponse(View):
    query: str
    hits: list[SearchHitView]


# --- long-lived sandboxes -----------------------------------------------------------------


class SandboxView(View):
    sandbox_id: str
    status: SandboxStatus
    desktop: bool
    network: NetworkField = Field(description=NETWORK_DESCRIPTION)
    ttl_seconds: float
    executor_id: str | None
    created_at: str | None
    expires_at: str | None
    error: str | None = Field(description="Why it failed or ended.")
    tenant_id: str | None = Field(None, description="The tenant that owns it (its API key's).")
    vnc_path: str | None = Field(description="Its noVNC desktop (with a token), when it has one.")
    jupyter_path: str
    network_status: NetworkStatusView | None = Field(
        None, description="What its network refused so far (GET of one sandbox with network only)."
    )

    @staticmethod
    def fields_of(sandbox: sandbox_pb2.Sandbox) -> dict[str, Any]:
        base = f"/v1/sandboxes/{sandbox.sandbox_id}"
        return {
            "sandbox_id": sandbox.sandbox_id,
            "status": SANDBOX_STATE_NAMES.get(sandbox.state, "unspecified"),
            "desktop": sandbox.spec.desktop,
            "network": network_of(sandbox.spec.network, sandbox.spec.network_rules),
            "ttl_seconds": sandbox.spec.ttl.ToNanoseconds() / 1e9,
            "executor_id": sandbox.executor_id or None,
            "created_at": _time(sandbox.created_at, sandbox.HasField("created_at")),
            "expires_at": _time(sandbox.expires_at, sandbox.HasField("expires_at")),
            "error": sandbox.error or None,
            "tenant_id": sandbox.tenant_id or None,
            "vnc_path": f"{base}/vnc/" if sandbox.spec.desktop else None,
            "jupyter_path": f"{base}/jupyter/",
            "network_status": (
                NetworkStatusView.from_proto(sandbox.network_status) if sandbox.HasField("network_status") else None
            ),
        }

    @classmethod
    def from_proto(cls, sandbox: sandbox_pb2.Sandbox) -> SandboxView:
        return cls.model_validate(cls.fields_of(sandbox))


class SandboxCreated(SandboxView):
    """POST /v1/sandboxes: the sandbox and its two tokens, shown this once."""

    token: str = Field(description="Full access: the desktop with control, Jupyter.")
    view_token: str = Field(description="The desktop without control, nothing else.")
    jupyter_url: str
    vnc_url: str | None = Field(None, exclude_if=_absent, description="Left out without a desktop.")
    vnc_view_url: str | None = Field(None, exclude_if=_absent, description="Left out without a desktop.")

    @classmethod
    def from_reply(cls, reply: sandbox_pb2.CreateSandboxResponse) -> SandboxCreated:
        sandbox = reply.sandbox
        base = f"/v1/sandboxes/{sandbox.sandbox_id}"
        fields = cls.fields_of(sandbox)
        fields.update(
            token=reply.token, view_token=reply.view_token, jupyter_url=f"{base}/jupyter/?token={reply.token}"
        )
        if sandbox.spec.desktop:
            fields.update(
                vnc_url=f"{base}/vnc/?token={reply.token}", vnc_view_url=f"{base}/vnc/?token={reply.view_token}"
            )
        return cls.model_validate(fields)


class SandboxList(View):
    sandboxes: list[SandboxView]


# --- errors and health --------------------------------------------------------------------


class ErrorDetail(View):
    code: str = Field(description="Machine-readable, e.g. invalid_argument, not_found.")
    message: str = Field(description="What went wrong, naming the field or the task.")
    details: list[dict[str, str]] | None = Field(
        None, exclude_if=_absent, description="Per-field problems ({field, message}) of a 400."
    )


class ErrorResponse(View):
    error: ErrorDetail


class HealthResponse(View):
    status: Literal["ok", "degraded"] = Field(
        description="'ok': every service answers; 'degraded': the gateway still schedules and runs "
        "tasks, but a service it does not need for that (memory) is down."
    )
    services: dict[str, str] = Field(description="'serving', or what is wrong, per service.")
    degraded: list[str] | None = Field(
        None, exclude_if=_absent, description="The services that are down, when degraded."
    )
    message: str | None = Field(
        None, exclude_if=_absent, description="What does not work meanwhile, when degraded."
    )


class HealthUnavailableResponse(View):
    status: Literal["unavailable"]
    services: dict[str, str] = Field(description="'serving', or what is wrong, per service.")
    error: ErrorDetail
