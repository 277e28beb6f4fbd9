"""What a sandbox driver provides: one isolated process running the agent, and its byte stream.

The deployment/runtime split of SWE-ReX: a `Transport` starts the process (a bwrap namespace, a
container, a pod...), carries bytes to and from the agent inside it, kills it, and says why it
died. It knows nothing of the agent protocol. `AgentSandbox` (agent_sandbox.py) is the one
agent client, and the `Sandbox` the executor uses, on top of any transport: a new isolation
technology needs only a transport (plus a driver class that builds it).
"""

from __future__ import annotations

import abc

import structlog

from services.executor.drivers.base import SandboxConfig


class Transport(abc.ABC):
    """The isolated process of one sandbox. Single use: start once, kill once (idempotent)."""

    # How errors name what was started ("the sandbox container did not start within 60s").
    what: str = "the sandbox"
    # How long the agent gets to say it is ready after start() returned.
    ready_timeout: float = 20.0
    # Memory and processes are limited per sandbox (a cgroup: containers, pods) rather than
    # per process: the agent then sets no rlimits for them (they would count every sandbox's
    # uid-1000 processes together) and reports the cgroup's counters, which name the limit.
    cgroup_limits: bool = False
    # Size of the sandbox's /tmp in MiB (0: not limited), for the words of a disk-full step.
    tmp_size_mb: int = 0

    def __init__(self, config: SandboxConfig) -> None:
        # The configuration the process was started with (a warm sandbox keeps its own when
        # it is handed a task; its log is re-bound to the task's id then).
        self.config = config
        self.log: structlog.stdlib.BoundLogger = structlog.get_logger().bind(task_id=config.task_id)

    @abc.abstractmethod
    async def start(self) -> None:
        """Starts the process; returns once bytes can flow. Raises SandboxError."""

    async def started(self) -> None:
        """Called once the agent said it is ready (learn pids and the like). Must not hang."""
        return None

    @abc.abstractmethod
    async def read(self) -> bytes:
        """The next bytes the agent wrote (its stdout); b"" once the stream ended."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Writes to the agent's stdin; raises SandboxError when the process is gone."""

    @abc.abstractmethod
    async def kill(self) -> None:
        """Kills every process of the sandbox and returns once none is left (bounded: never
        hangs on one process). Also undoes a start() that failed half way. Idempotent."""

    @abc.abstractmethod
    async def death_reason(self) -> str:
        """After read() returned b"" without a kill: why the sandbox ended, in words for the
        user (the isolation tool's last words, an out-of-memory kill...)."""

    @property
    def running(self) -> bool:
        """Whether the process is (as far as is known without asking anyone) still there."""
        return True

    # Paths: the agent's view of a path inside the sandbox and back. The same for every
    # isolating transport (the sandbox sees config.task_dir); the unisolated local transport's
    # agent sees the host's directories instead.

    def agent_path(self, path: str) -> str:
        """A sandbox path (config.task_dir, a path under it, or a relative path) as the agent
        sees it."""
        return path

    def sandbox_path(self, path: str) -> str:
        """A path the agent reported, as the sandbox's users know it."""
        return path
