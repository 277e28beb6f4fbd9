"""JSON shapes of memory records, and the response models that document the API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from corral.v1 import memory_pb2

HISTORY_KIND_NAMES = {
    memory_pb2.HISTORY_KIND_UNSPECIFIED: "unspecified",
    memory_pb2.HISTORY_KIND_TASK_STARTED: "task_started",
    memory_pb2.HISTORY_KIND_ACTION: "action",
    memory_pb2.HISTORY_KIND_RESULT: "result",
    memory_pb2.HISTORY_KIND_TASK_FINISHED: "task_finished",
}


def history_event_to_json(event: memory_pb2.HistoryEvent) -> dict[str, Any]:
    return {
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


# --- documentation-only models (responses are built from the protos directly) -------------


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable, e.g. invalid_argument, not_found.")
    message: str = Field(description="What went wrong, naming the field or the task.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ScheduleResponse(BaseModel):
    task_id: str


class StepView(BaseModel):
    index: int
    tool: str = Field(description="shell | python | typescript | read_file | write_file | gui")
    status: str = Field(description="pending | running | completed | failed | skipped | cancelled")
    exit_code: int | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    duration_seconds: float
    error: str | None
    started_at: str | None
    finished_at: str | None


class TaskView(BaseModel):
    task_id: str
    status: str = Field(description="scheduled | running | completed | failed | cancelled")
    error: str | None
    steps: list[StepView]
    executor_id: str | None
    task_dir: str | None = Field(description="/tasks/{task_id} inside the sandbox.")
    log_path: str | None = Field(description="agent.log inside the sandbox.")
    host_log_path: str | None = Field(description="agent.log on the executor's host.")
    created_at: str | None
    started_at: str | None
    finished_at: str | None


class TaskList(BaseModel):
    tasks: list[TaskView]
    next_page_token: str | None


class HistoryEventView(BaseModel):
    task_id: str
    sequence: int
    time: str | None
    kind: str = Field(description="task_started | action | result | task_finished")
    step_index: int | None
    tool: str | None
    action: str
    state: str | None
    exit_code: int | None
    stdout: str
    stderr: str
    error: str | None


class HistoryResponse(BaseModel):
    task_id: str
    events: list[HistoryEventView]
    next_after: int = Field(description="Pass as ?after= to get the events that follow.")


class SearchHitView(BaseModel):
    task_id: str
    sequence: int
    snippet: str
    event: HistoryEventView


class SearchResponse(BaseModel):
    query: str
    hits: list[SearchHitView]


class HealthResponse(BaseModel):
    status: str = Field(description="ok when scheduler and memory both answer SERVING.")
    services: dict[str, str]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Malformed JSON or an invalid field (the message names it).",
        404: "Unknown task.",
        413: "Request body too large.",
        503: "A backing service is unavailable.",
    }.items()
}
