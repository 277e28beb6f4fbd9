"""What every step tool is: its JSON model, its proto mapping, its checks, its words, its runner.

A tool is one `StepTool` subclass in one module of this package, registered in
`corral/steps/__init__.py`. The scheduler (at submission) and the executor (at admission) call
the same `check`; the executor's step loop calls `run` with a `StepContext`, the small set of
things a step may do to its sandbox. Nothing here imports the executor: it implements the
context (services/executor/step_context.py).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Protocol, TypeVar

from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field

from corral.bounds import MAX_STEP_TIMEOUT_SECONDS
from corral.errors import InvalidTask

if TYPE_CHECKING:
    from corral.v1 import gui_pb2_grpc

StreamName = Literal["stdout", "stderr"]
ProcessKind = Literal["shell", "python", "typescript"]


class StepFailed(Exception):
    """Raised by a tool's runner: the step failed, and the message says why."""


@dataclass
class StepOutcome:
    """How one step ended, as the step loop records it."""

    ok: bool
    stdout: str = ""
    stderr: str = ""
    # The process's exit code; -N when killed by signal N; None for file and gui steps.
    exit_code: int | None = None
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    # Why it failed, in words.
    error: str = ""

    @classmethod
    def done(cls, stdout: str = "") -> StepOutcome:
        return cls(ok=True, stdout=stdout)

    @classmethod
    def failed(cls, error: str, *, timed_out: bool = False) -> StepOutcome:
        return cls(ok=False, error=error, timed_out=timed_out)


@dataclass(frozen=True)
class FileEntry:
    """One entry of a directory listing."""

    name: str
    type: Literal["file", "directory", "symlink", "other"]
    size: int
    # Seconds since the epoch.
    mtime: float


@dataclass(frozen=True)
class Listing:
    """A directory's entries (sorted by name); `path` as the sandbox sees it."""

    path: str
    entries: list[FileEntry]
    # More entries than a listing returns (the first ones by name are kept).
    truncated: bool = False


class StepContext(Protocol):
    """What a running step may do; the executor implements it for one step of one task."""

    @property
    def index(self) -> int:
        """The step's position in its task (0-based)."""

    @property
    def timeout(self) -> float:
        """Seconds the step may take."""

    def output(self, stream: StreamName, data: str) -> None:
        """Streams a piece of the step's output to watchers (stdout / stderr)."""

    async def run_process(self, kind: ProcessKind, code: str) -> StepOutcome:
        """Runs a command or program in the sandbox, streaming its output; the error names
        the limit or timeout it hit."""

    async def read_file(self, path: str) -> str:
        """A file's text, resolved and confined like every step path; raises StepFailed."""

    async def write_file(self, path: str, content: str) -> str:
        """Writes a file (parents created); returns its path inside the sandbox."""

    async def list_files(self, path: str) -> Listing:
        """The entries of a directory, confined like read_file."""

    async def gui(self) -> gui_pb2_grpc.GuiServiceAsyncStub:
        """The sandbox's gui service; raises StepFailed when the sandbox has no desktop."""

    async def save_screenshot(self, name: str, png: bytes) -> str:
        """Saves a PNG as screenshots/NAME in the task directory; returns its sandbox path."""


class StepModelBase(BaseModel):
    """Fields every step has in JSON."""

    model_config = ConfigDict(extra="forbid")

    timeout: float | None = Field(
        None,
        gt=0,
        le=MAX_STEP_TIMEOUT_SECONDS,
        allow_inf_nan=False,
        description="Seconds before the step is killed (default: the task's, 60 s; at most a week, and "
        "at most the deployment's CORRAL_MAX_STEP_TIMEOUT_SECONDS).",
    )
    continue_on_error: bool = Field(False, description="Run the next steps even if this fails.")


ModelT = TypeVar("ModelT", bound=StepModelBase)
ActionT = TypeVar("ActionT", bound=Message)


class StepTool(abc.ABC, Generic[ModelT, ActionT]):
    """One step tool. `name` is the JSON `tool` value and the field of the proto Step oneof."""

    name: ClassVar[str]
    # The JSON model (or a discriminated union of models) of the step.
    model: ClassVar[Any]
    # Whether the task's sandbox needs a desktop for this tool.
    needs_desktop: ClassVar[bool] = False

    @abc.abstractmethod
    def to_proto(self, step: ModelT) -> ActionT:
        """The step's action message (the proto Step's oneof field `name`)."""

    @abc.abstractmethod
    def check(self, action: ActionT, where: str) -> None:
        """Raises InvalidTask naming the field (`where` is e.g. 'steps[2].shell')."""

    @abc.abstractmethod
    def describe(self, action: ActionT) -> str:
        """What the step does, human-readable, for agent.log and history."""

    @abc.abstractmethod
    async def run(self, action: ActionT, ctx: StepContext) -> StepOutcome:
        """Does the step's work; raises StepFailed (or returns a failed outcome) when it fails."""


def require_text(value: str, where: str) -> None:
    """A command, program or path: not empty, and no NUL (no argv, source or path holds one)."""
    if not value:
        raise InvalidTask(f"{where} is empty")
    if "\0" in value:
        raise InvalidTask(f"{where} contains a NUL character")
