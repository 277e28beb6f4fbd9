"""The sandbox driver interface: what the executor needs from any isolation technology.

A driver creates one `Sandbox` per task; the sandbox lives as long as the task, runs its process
steps one after another (background processes survive between steps), reads and writes files
in the task directory, and on `close()` kills everything it contains. Nothing here knows about
bubblewrap, containers or pods.
"""

from __future__ import annotations

import abc
import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from corral import errors
from corral.config import Settings
from corral.network_rules import NetworkRules
from corral.steps.base import Listing
from corral.v1 import task_pb2

if TYPE_CHECKING:
    from services.executor.network.status import NetworkStatus
    from services.executor.task_fs import TaskFilesystems

StreamName = Literal["stdout", "stderr"]
ProcessKind = Literal["argv", "shell", "python", "typescript"]
# Called with (stream, text) for each piece of output as the process produces it.
OutputCallback = Callable[[StreamName, str], None]
# Called (on the event loop) with a short description of each refused lookup.
NetworkRefusedCallback = Callable[[str], None]

MIB = 1024 * 1024
# Inside every sandbox: the run directory (unix sockets of the gui service, VNC and Jupyter,
# bind-mounted from SandboxConfig.host_run_dir) and where the gui service's Python package
# (corral.v1 stubs + services.gui) is found.
RUN_DIR = "/run/corral"
SOURCE_DIR = "/opt/corral"
# Who steps run as inside every sandbox (user `agent` in both drivers), and their PATH.
SANDBOX_UID = 1000
SANDBOX_GID = 1000
SANDBOX_USER = "agent"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
# A long-lived sandbox's workspace: the working directory and HOME of everything run in it,
# across tasks (SandboxConfig.workspace). On the host it is WORKSPACE_NAME in the sandbox's
# tasks directory, so the sandbox's disk limit covers it.
WORKSPACE_DIR = "/workspace"
WORKSPACE_NAME = ".workspace"


class SandboxError(errors.Unavailable):
    """The sandbox could not be created, or died while in use."""


class FileRefused(errors.InvalidArgument):
    """A read_file/write_file request was refused (path outside the task, too large...)."""


class FileMissing(errors.NotFound, FileRefused):
    """A file request named a path that does not exist: NotFound to callers (HTTP 404), and
    still a FileRefused to the code that records refusals."""


@dataclass(frozen=True)
class SandboxLimits:
    memory_mb: int
    max_processes: int
    max_file_size_mb: int
    max_output_bytes: int
    # The size of the sandbox's own filesystem (task_fs.py), else checked by the executor's
    # disk watch (disk_quota.py).
    disk_mb: int

    @classmethod
    def resolve(cls, settings: Settings, asked: task_pb2.Limits | None = None) -> SandboxLimits:
        """What a task or sandbox asked for, the executor's defaults where it did not (0)."""
        asked = asked or task_pb2.Limits()
        return cls(
            memory_mb=int(asked.memory_mb or settings.sandbox_memory_mb),
            max_processes=int(asked.max_processes or settings.sandbox_max_processes),
            max_file_size_mb=int(asked.max_file_size_mb or settings.sandbox_max_file_size_mb),
            max_output_bytes=int(asked.max_output_bytes or settings.max_output_bytes),
            disk_mb=int(asked.disk_mb or settings.sandbox_disk_mb),
        )


@dataclass(frozen=True)
class SandboxConfig:
    task_id: str
    # The task directory on the executor's host; seen inside as `task_dir`.
    host_task_dir: Path
    limits: SandboxLimits
    network: bool = False
    # What a sandbox with network may reach (corral/network_rules.py); the default policy if empty.
    network_rules: NetworkRules = field(default_factory=NetworkRules)
    # Called (on the event loop) with words for each refused lookup ("lookup of x.test refused").
    on_network_refused: Callable[[str], None] | None = None
    # Extra environment for every process (on top of the sandbox's minimal one).
    env: Mapping[str, str] = field(default_factory=dict)
    # The sandbox will run a desktop (services/executor/desktop.py starts it): the driver
    # mounts host_run_dir at RUN_DIR and the gui service's package at SOURCE_DIR.
    desktop: bool = False
    # Host directory seen inside as RUN_DIR (unix sockets the host connects to); none if None.
    host_run_dir: Path | None = None
    # A long-lived sandbox: host_task_dir is mounted at /tasks and holds one directory per
    # task; processes and files name their task directory with ProcessRequest.cwd / `cwd`.
    shared_tasks: bool = False
    # With shared_tasks: host_task_dir/WORKSPACE_NAME is mounted at WORKSPACE_DIR, the
    # home and working directory of every process.
    workspace: bool = False

    @property
    def task_dir(self) -> str:
        return "/tasks" if self.shared_tasks else f"/tasks/{self.task_id}"

    @property
    def home(self) -> str:
        return WORKSPACE_DIR if self.workspace else self.task_dir

    @property
    def host_workspace_dir(self) -> Path | None:
        return self.host_task_dir / WORKSPACE_NAME if self.workspace else None


def sandbox_env(config: SandboxConfig) -> dict[str, str]:
    """The base environment of every process in every sandbox (the agent's and each step's);
    the sandbox's `config.env` and a request's own `env` go on top."""
    return {
        "PATH": SANDBOX_PATH,
        "HOME": config.home,
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        # A Python step's prints reach its output as they happen, not all at its exit.
        "PYTHONUNBUFFERED": "1",
        "USER": SANDBOX_USER,
        "LOGNAME": SANDBOX_USER,
        "CORRAL_TASK_ID": config.task_id,
        "CORRAL_TASK_DIR": config.task_dir,
    }


@dataclass(frozen=True)
class ProcessRequest:
    """One process step: `argv`, or code for one of the built-in tools (shell, python...)."""

    kind: ProcessKind
    timeout: float
    argv: tuple[str, ...] = ()
    # The shell command, or the Python / TypeScript source.
    code: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    # Bytes of stdout (and separately of stderr) kept; the sandbox's limit when 0.
    max_output_bytes: int = 0
    # Working directory inside the sandbox (the workspace in a long-lived sandbox); the
    # sandbox's own task_dir when empty.
    cwd: str = ""


@dataclass
class ProcessResult:
    # None when the process was killed by a signal (see `signal`) or never started.
    exit_code: int | None
    signal: int | None = None
    timed_out: bool = False
    # Stopped on request (Sandbox.kill) rather than by its timeout.
    killed: bool = False
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    # Why the process failed, in words, when the driver knows (a limit hit, could not start...).
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.killed and not self.error


class Sandbox(abc.ABC):
    """A running sandbox for one task."""

    config: SandboxConfig
    # Called (once) by a close() that moves the task directory, as soon as it is back at its
    # host path, before the rest of the teardown: the task's `finished` need not wait for that.
    on_files_back: Callable[[], None] | None = None

    @abc.abstractmethod
    async def run(self, request: ProcessRequest, on_output: OutputCallback) -> ProcessResult:
        """Runs one process in the task directory and waits for it (or its timeout)."""

    @abc.abstractmethod
    async def read_file(self, path: str, max_bytes: int, cwd: str = "", roots: Sequence[str] = ()) -> str:
        """The text of a file inside the task directory (`cwd` if set, where relative paths
        start; an absolute path may also be inside one of `roots`); raises FileRefused."""

    @abc.abstractmethod
    async def write_file(
        self, path: str, content: str, max_bytes: int, cwd: str = "", roots: Sequence[str] = ()
    ) -> str:
        """Writes a file (confined as read_file), parents created; returns its sandbox path."""

    @abc.abstractmethod
    async def list_files(self, path: str, max_entries: int, cwd: str = "", roots: Sequence[str] = ()) -> Listing:
        """A directory (confined as read_file); raises FileRefused."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Kills every process in the sandbox; returns once none is left. Idempotent."""

    async def update_network(self, rules: NetworkRules) -> None:
        """New egress rules, effective for new connections and lookups at once."""
        raise errors.FailedPrecondition(
            f"sandbox of task {self.config.task_id} was created without network; its rules cannot change"
        )

    async def network_status(self) -> NetworkStatus:
        from services.executor.network.status import NetworkStatus

        return NetworkStatus(enabled=False, rules=self.config.network_rules)


def make_sandbox_dir(path: Path, owner: tuple[int, int] | None, mode: int) -> None:
    """Creates `path` and hands it to the sandbox user (`owner`, `mode`) through a descriptor:
    whatever a sandbox may have planted at `path` (a symlink, a FIFO) is refused with an error,
    never followed, chowned or chmodded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def open_sandbox_dir(parent: Path, name: str) -> int:
    """A descriptor of the directory `name` in `parent` (a directory the sandbox cannot write),
    opened without following a link at either: the executor then writes its own files there
    (agent.log, memory.json, screenshots) through it, whatever the sandbox renames or plants
    later. Raises OSError (ELOOP, ENOTDIR) if the sandbox replaced the directory by a link."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    parent_fd = os.open(parent, flags)
    try:
        return os.open(name, flags, dir_fd=parent_fd)
    finally:
        os.close(parent_fd)


class SandboxDriver(abc.ABC):
    name: str
    # What bounds the host's memory and pids for this driver's sandboxes, in words (the
    # executor's status reports it; a fallback to weaker limits says so here).
    limits_description: str = ""
    # Per-sandbox filesystems (services/executor/task_fs.py), set by the executor at start.
    task_fs: TaskFilesystems | None = None

    def disk_fs_blocker(self) -> str:
        """Why this driver's sandboxes cannot use per-sandbox filesystems ("" when they can)."""
        return ""

    async def claim_warm(self, config: SandboxConfig) -> Sandbox | None:
        """A warm sandbox handed this task (its directory made in the sandbox's slot), or None
        when none is ready or fits; the task then gets create()'s cold sandbox."""
        return None

    @abc.abstractmethod
    async def create(self, config: SandboxConfig) -> Sandbox:
        """Starts a sandbox for a task; raises SandboxError when it cannot."""

    def prepare_task_dir(self, path: Path) -> None:
        """Creates the host task directory so the sandbox user can write in it."""
        make_sandbox_dir(path, None, 0o755)

    def prepare_run_dir(self, path: Path) -> None:
        """Creates the host run directory (unix sockets) so the sandbox user can write in it."""
        self.prepare_task_dir(path)

    async def start(self, executor_id: str) -> None:
        """Called once the executor knows its id, before it accepts tasks (cleanup, warm-up)."""
        return None

    async def stop(self) -> None:
        """Called when the executor stops, after its tasks ended: releases what start() made."""
        return None
