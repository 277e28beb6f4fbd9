"""The JSON documents of the interactive sandbox calls (commands, files, the desktop, code
contexts), as pydantic models: the routes of gateway/routers/ declare them as their response
models, so /openapi.json says what each sends (corral/views.py holds the tasks' and sandboxes')."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from corral.views import View

FileType = Literal["file", "directory", "symlink", "other"]
CommandState = Literal["running", "exited"]


# --- commands -----------------------------------------------------------------------------


class CommandExit(View):
    """How a command ended (without its output)."""

    exit_code: int | None = Field(description="Unset when killed by a signal or never started.")
    signal: int | None
    timed_out: bool
    killed: bool
    stdout_truncated: bool
    stderr_truncated: bool
    duration: float = Field(description="Seconds.")
    error: str = Field(description="Why it did not run (empty when it did).")


class CommandResultView(CommandExit):
    """POST .../commands (foreground): its output and its end."""

    stdout: str
    stderr: str


class CommandStarted(View):
    """POST .../commands with background: its handle."""

    command_id: str


class CommandStatusView(CommandResultView):
    """GET .../commands/{id}/output: its state, output so far, and end once ended."""

    command_id: str
    state: CommandState
    tool: str
    command: str


class CommandStatusNoOutput(CommandExit):
    """GET .../commands/{id}: its state, and its end once ended."""

    command_id: str
    state: CommandState
    tool: str
    command: str


# --- files --------------------------------------------------------------------------------


class FileInfoView(View):
    name: str
    path: str
    type: FileType
    size: int
    mtime: float = Field(description="Seconds since the epoch.")


class FileListView(View):
    path: str
    entries: list[FileInfoView]
    truncated: bool = Field(description="More entries than one listing returns.")


class PathView(View):
    """The path made, removed or renamed to."""

    path: str


class UploadView(View):
    path: str
    files: int
    directories: int
    bytes: int


# --- the desktop --------------------------------------------------------------------------


class DesktopActionResult(View):
    """What the action reports (e.g. the cursor's position); a screenshot's PNG in png_base64."""

    model_config = ConfigDict(extra="allow")

    png_base64: str | None = Field(None, description="screenshot only: the PNG, base64.")


# --- code contexts ------------------------------------------------------------------------


class CodeContextView(View):
    """A code context: a Jupyter kernel in the sandbox that keeps its state between runs."""

    context_id: str
    language: Literal["python"]
    cwd: str = Field(description="Where its code runs, in the sandbox.")


class ExecutionResult(View):
    """One rich output (E2B's Result): the value of the last expression (`is_main_result`) or
    something displayed, in each format it came in; binary formats are base64."""

    is_main_result: bool
    text: str | None = Field(None, exclude_if=lambda v: v is None, description="text/plain")
    html: str | None = Field(None, exclude_if=lambda v: v is None, description="text/html")
    markdown: str | None = Field(None, exclude_if=lambda v: v is None, description="text/markdown")
    svg: str | None = Field(None, exclude_if=lambda v: v is None, description="image/svg+xml")
    png: str | None = Field(None, exclude_if=lambda v: v is None, description="image/png, base64")
    jpeg: str | None = Field(None, exclude_if=lambda v: v is None, description="image/jpeg, base64")
    pdf: str | None = Field(None, exclude_if=lambda v: v is None, description="application/pdf, base64")
    latex: str | None = Field(None, exclude_if=lambda v: v is None, description="text/latex")
    json_: Any = Field(None, alias="json", exclude_if=lambda v: v is None, description="application/json")
    javascript: str | None = Field(None, exclude_if=lambda v: v is None, description="application/javascript")
    extra: dict[str, Any] | None = Field(None, exclude_if=lambda v: v is None, description="Other mime types.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)


class ExecutionLogs(View):
    stdout: list[str] = Field(description="Output chunks as printed, newlines kept.")
    stderr: list[str]


class ExecutionError(View):
    name: str = Field(examples=["ZeroDivisionError"])
    value: str
    traceback: str


class ExecutionView(View):
    """POST .../contexts/{id}/run: what the code printed, displayed and raised."""

    results: list[ExecutionResult]
    logs: ExecutionLogs
    error: ExecutionError | None = Field(description="The exception it raised (TimeoutError: interrupted).")
    execution_count: int | None
