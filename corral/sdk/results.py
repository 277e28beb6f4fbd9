"""What SDK calls return: typed, immutable results built from the gateway's JSON."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from corral import errors

Stream = Literal["stdout", "stderr"]


class CommandFailed(errors.FailedPrecondition):
    """A command asked with `check=True` ended other than with exit code 0."""

    def __init__(self, result: CommandResult) -> None:
        what = result.error or (f"exit code {result.exit_code}" if result.exit_code is not None else "no exit code")
        super().__init__(f"the command failed: {what}")
        self.result = result
        self.exit_code = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr


# The names of the error tree: Timeout is a command or call that ran out of time.
Timeout = errors.DeadlineExceeded


@dataclass(frozen=True)
class CommandResult:
    exit_code: int | None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    # Why it failed, in words (timeout, a limit, could not start...); "" when it ran to its end.
    error: str = ""
    timed_out: bool = False
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.error and not self.timed_out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CommandResult:
        exit_code = data.get("exit_code")
        return cls(
            exit_code=int(exit_code) if exit_code is not None else None,
            stdout=str(data.get("stdout", "")),
            stderr=str(data.get("stderr", "")),
            stdout_truncated=bool(data.get("stdout_truncated", False)),
            stderr_truncated=bool(data.get("stderr_truncated", False)),
            error=str(data.get("error", "") or ""),
            timed_out=bool(data.get("timed_out", False)),
            duration=float(data.get("duration", data.get("duration_seconds", 0.0)) or 0.0),
        )

    def checked(self, check: bool) -> CommandResult:
        if check and not self.ok:
            if self.timed_out:
                raise Timeout(self.error or "the command timed out")
            raise CommandFailed(self)
        return self


@dataclass(frozen=True)
class OutputChunk:
    """A piece of a command's output, as it was produced."""

    stream: Stream
    text: str

    def hand_to(self, on_stdout: OnOutput | None, on_stderr: OnOutput | None) -> None:
        """Calls the callback of its stream, if there is one."""
        callback = on_stdout if self.stream == "stdout" else on_stderr
        if callback is not None:
            callback(self.text)


# A command's on_stdout / on_stderr: called with each piece of that stream as it comes.
OnOutput = Callable[[str], None]


@dataclass(frozen=True)
class FileInfo:
    name: str
    type: Literal["file", "directory", "symlink", "other"]
    size: int = 0
    mtime: float = 0.0
    path: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileInfo:
        kind = str(data.get("type", "other"))
        return cls(
            name=str(data.get("name", "")),
            type=kind if kind in ("file", "directory", "symlink") else "other",  # type: ignore[arg-type]
            size=int(data.get("size", 0) or 0),
            mtime=float(data.get("mtime", 0) or 0),
            path=str(data.get("path", "")),
        )


@dataclass(frozen=True)
class StepOutcome:
    index: int
    tool: str
    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    error: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepOutcome:
        exit_code = data.get("exit_code")
        return cls(
            index=int(data.get("index", 0)),
            tool=str(data.get("tool", "")),
            status=str(data.get("status", "")),
            exit_code=int(exit_code) if exit_code is not None else None,
            stdout=str(data.get("stdout", "")),
            stderr=str(data.get("stderr", "")),
            error=str(data.get("error", "") or ""),
        )


@dataclass(frozen=True)
class TaskResult:
    """A one-shot task's final status (GET /v1/tasks/{id})."""

    task_id: str
    status: str
    steps: list[StepOutcome] = field(default_factory=list)
    error: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskResult:
        return cls(
            task_id=str(data.get("task_id", "")),
            status=str(data.get("status", "")),
            steps=[StepOutcome.from_json(s) for s in data.get("steps", [])],
            error=str(data.get("error", "") or ""),
            raw=data,
        )



class OutputCollector:
    """Reads a command's stream: hands on each piece of output, keeps it, and makes the
    result (the stream's exit event carries no output: it is the pieces, put together)."""

    def __init__(self) -> None:
        self._out: dict[Stream, list[str]] = {"stdout": [], "stderr": []}
        self._exit: CommandResult | None = None

    def feed(self, event: str, data: dict[str, Any]) -> OutputChunk | None:
        if event in ("stdout", "stderr"):
            chunk = OutputChunk("stdout" if event == "stdout" else "stderr", str(data.get("data", "")))
            self._out[chunk.stream].append(chunk.text)
            return chunk
        if event == "exit":
            self._exit = CommandResult.from_json(data)
        return None

    @property
    def result(self) -> CommandResult | None:
        if self._exit is None:
            return None
        return dataclasses.replace(
            self._exit,
            stdout=self._exit.stdout or "".join(self._out["stdout"]),
            stderr=self._exit.stderr or "".join(self._out["stderr"]),
        )


# --- code contexts (E2B's code interpreter's shapes) --------------------------------------


@dataclass(frozen=True)
class CodeContext:
    """A Jupyter kernel in the sandbox that keeps its variables between `run_code` calls."""

    id: str
    language: str
    cwd: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CodeContext:
        return cls(id=str(data["context_id"]), language=str(data.get("language", "python")), cwd=str(data.get("cwd", "")))


# A result's formats, by field; binary ones (png, jpeg, pdf) are base64 text.
RESULT_FORMATS = ("text", "html", "markdown", "svg", "png", "jpeg", "pdf", "latex", "json", "javascript")


@dataclass(frozen=True)
class Result:
    """One rich output: the last expression's value (`is_main_result`) or a display (a plot...)."""

    is_main_result: bool = False
    text: str | None = None
    html: str | None = None
    markdown: str | None = None
    svg: str | None = None
    png: str | None = None
    jpeg: str | None = None
    pdf: str | None = None
    latex: str | None = None
    json: Any = None
    javascript: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def formats(self) -> list[str]:
        """The formats it came in: ["text", "png"]..."""
        return [name for name in RESULT_FORMATS if getattr(self, name) is not None] + list(self.extra)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        known = {name: data[name] for name in RESULT_FORMATS if data.get(name) is not None}
        return cls(is_main_result=bool(data.get("is_main_result")), extra=dict(data.get("extra") or {}), **known)


@dataclass(frozen=True)
class Logs:
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ExecutionError:
    """The exception the code raised: its class name, message and (plain-text) traceback."""

    name: str
    value: str
    traceback: str


@dataclass(frozen=True)
class Execution:
    results: list[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: ExecutionError | None = None
    execution_count: int | None = None

    @property
    def text(self) -> str | None:
        """The main result's text, when there is one."""
        return next((r.text for r in self.results if r.is_main_result), None)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Execution:
        logs = data.get("logs") or {}
        error = data.get("error")
        count = data.get("execution_count")
        return cls(
            results=[Result.from_json(r) for r in data.get("results", [])],
            logs=Logs(stdout=list(logs.get("stdout", [])), stderr=list(logs.get("stderr", []))),
            error=ExecutionError(str(error["name"]), str(error["value"]), str(error["traceback"])) if error else None,
            execution_count=int(count) if count is not None else None,
        )
