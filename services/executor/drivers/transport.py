"""What a sandbox driver provides: one isolated process running the agent, and its byte stream.

The deployment/runtime split of SWE-ReX: a `Transport` starts the process (a bwrap namespace, a
container, a pod...), carries bytes to and from the agent inside it, kills it, and says why it
died. It knows nothing of the agent protocol. `AgentSandbox` (agent_sandbox.py) is the one
agent client, and the `Sandbox` the executor uses, on top of any transport: a new isolation
technology needs only a transport (plus a driver class that builds it).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
from typing import Any, BinaryIO

import structlog

from corral import errors
from corral.network_rules import NetworkRules
from services.executor.drivers.base import SandboxConfig, SandboxError, SandboxLimits
from services.executor.network.status import NetworkStatus

# How much of the agent's stdout is read (and fed to the agent channel) at a time.
READ_CHUNK_BYTES = 1024 * 1024
# How long a killed process gets to go before the next, harder step.
KILL_GRACE_SECONDS = 5.0
# How much of the process's stderr is kept, for the words of its death.
STDERR_TAIL_BYTES = 4096


class Transport(abc.ABC):
    """The isolated process of one sandbox. Single use: start once, kill once (idempotent)."""

    # How errors name what was started ("the sandbox container did not start within 60s").
    what: str = "the sandbox"
    # How long the agent gets to say it is ready after start() returned.
    ready_timeout: float = 20.0
    # Memory and processes are limited per sandbox (a cgroup: containers, pods, bubblewrap
    # where the executor can make one) rather than per process: the agent then sets no rlimits
    # for them and reports the cgroup's counters, which name the limit.
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

    def pid_budget_hit(self) -> int:
        """After a step's fork was refused: the executor's pid budget if that budget (not the
        sandbox's own limit) refused it, else 0."""
        return 0

    def apply_limits(self, limits: SandboxLimits) -> None:
        """A warm sandbox was claimed by a task with these limits: make its cgroup follow them
        where the transport has one (raises SandboxError when it cannot)."""
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

    async def clean_up(self) -> None:
        """After kill(): releases what it left, which nothing of the task needs (a cgroup, say);
        AgentSandbox.close calls it once the task's files are back. Idempotent."""
        return None

    @abc.abstractmethod
    async def death_reason(self) -> str:
        """After read() returned b"" without a kill: why the sandbox ended, in words for the
        user (the isolation tool's last words, an out-of-memory kill...)."""

    @property
    def running(self) -> bool:
        """Whether the process is (as far as is known without asking anyone) still there."""
        return True

    async def update_network(self, rules: NetworkRules) -> None:
        """See Sandbox.update_network; a transport without network rules of its own refuses."""
        raise errors.FailedPrecondition("this sandbox was created without network; its rules cannot change")

    async def network_status(self) -> NetworkStatus:
        return NetworkStatus(enabled=False, rules=self.config.network_rules)

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


class ChannelPipes:
    """The agent protocol's two pipes, apart from the process's stdio: the child's ends are
    passed to it by number (`child_fds`: requests to read, replies to write). Under bubblewrap
    this keeps the channel out of the sandbox's init, which keeps only its stdio."""

    def __init__(self) -> None:
        self.requests_read, self.requests_write = os.pipe2(os.O_CLOEXEC)
        self.replies_read, self.replies_write = os.pipe2(os.O_CLOEXEC)
        # Closed once each (a number closed twice may be someone else's by then).
        self._open = {self.requests_read, self.requests_write, self.replies_read, self.replies_write}

    @property
    def child_fds(self) -> tuple[int, int]:
        return self.requests_read, self.replies_write

    def _close(self, *fds: int) -> None:
        for fd in fds:
            if fd in self._open:
                self._open.discard(fd)
                os.close(fd)

    def close_child_ends(self) -> None:
        self._close(*self.child_fds)

    def take_parent_ends(self) -> tuple[BinaryIO, BinaryIO]:
        """The executor's ends (replies to read, requests to write) as files that own them."""
        self._open -= {self.replies_read, self.requests_write}
        return os.fdopen(self.replies_read, "rb", buffering=0), os.fdopen(self.requests_write, "wb", buffering=0)

    def close(self) -> None:
        """Closes what is still open (a start that failed)."""
        self._close(*sorted(self._open))


class SubprocessTransport(Transport):
    """A transport whose isolated process is a host subprocess: the agent's stdin and stdout
    are the process's pipes, and the tail of its stderr is kept for the words of its death.

    Subclasses start the process with `_spawn`, kill what is inside it in `_terminate`, and
    word an unexpected end in `_died_message`.
    """

    def __init__(self, config: SandboxConfig) -> None:
        super().__init__(config)
        self.process: asyncio.subprocess.Process | None = None
        self._stderr_tail = b""
        self._stderr_reader: asyncio.Task[None] | None = None
        self._killed = False
        # The agent's replies and requests: the process's stdout and stdin, or ChannelPipes.
        self._replies: asyncio.StreamReader | None = None
        self._requests: asyncio.StreamWriter | None = None
        self._replies_pipe: asyncio.ReadTransport | None = None  # ChannelPipes' only

    @property
    def running(self) -> bool:
        return not self._killed and self.process is not None and self.process.returncode is None

    async def _spawn(self, argv: list[str], channel: ChannelPipes | None = None, **kwargs: Any) -> None:
        """Starts `argv` in a new session with piped stderr (`kwargs` go to
        create_subprocess_exec) and starts keeping its stderr's tail. The agent's channel is
        the process's stdin and stdout, or `channel` (whose child ends must be in pass_fds;
        stdio is then /dev/null). Raises what that raises."""
        stdio = asyncio.subprocess.PIPE if channel is None else asyncio.subprocess.DEVNULL
        try:
            self.process = await asyncio.create_subprocess_exec(
                *argv, stdin=stdio, stdout=stdio, stderr=asyncio.subprocess.PIPE, start_new_session=True, **kwargs
            )
        except BaseException:
            if channel is not None:
                channel.close()
            raise
        self._stderr_reader = asyncio.create_task(self._read_stderr())
        if channel is None:
            self._replies, self._requests = self.process.stdout, self.process.stdin
            return
        channel.close_child_ends()
        replies, requests = channel.take_parent_ends()  # closed by the pipe transports
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_CHUNK_BYTES)
        self._replies_pipe, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), replies)
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, requests)
        self._replies, self._requests = reader, asyncio.StreamWriter(transport, protocol, None, loop)

    def _close_requests(self) -> None:
        """Closes the agent's stdin (it exits when that ends)."""
        if self._requests is not None:
            self._requests.close()

    async def read(self) -> bytes:
        assert self._replies is not None
        return await self._replies.read(READ_CHUNK_BYTES)

    async def write(self, data: bytes) -> None:
        if self._killed or self.process is None or self._requests is None:
            raise SandboxError("the sandbox is closed")
        try:
            self._requests.write(data)
            await self._requests.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise SandboxError(self._died_message()) from exc

    async def kill(self) -> None:
        if self._killed:
            return
        self._killed = True
        if self.process is not None:
            await self._terminate(self.process)
        # Our ends of ChannelPipes (the process's own pipes go with the process).
        if self._replies_pipe is not None:
            self._close_requests()
            self._replies_pipe.close()
        if self._stderr_reader is not None:
            self._stderr_reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._stderr_reader

    @abc.abstractmethod
    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        """Kills every process of the sandbox, `process` last (see `_kill_process`)."""

    async def _kill_process(self, process: asyncio.subprocess.Process, what: str, **ids: int) -> None:
        """SIGKILLs `process` if it is still there and waits (bounded) until it is gone; `what`
        and `ids` name it in the log when it outlives that."""
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            try:
                await asyncio.wait_for(process.wait(), KILL_GRACE_SECONDS)
            except TimeoutError:
                # Never hang a task's end (or the executor's stop) on one process.
                self.log.error(f"{what} did not exit after SIGKILL", **ids)

    async def death_reason(self) -> str:
        # Give the stderr reader a moment so the message carries the process's last words.
        await asyncio.sleep(0.05)
        if self.process is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 1)
        return self._died_message()

    @abc.abstractmethod
    def _died_message(self) -> str:
        """Why the process ended, in words for the user (self._stderr_tail has its last words)."""

    def _stderr_text(self) -> str:
        return self._stderr_tail.decode("utf-8", "replace").strip()

    async def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while chunk := await self.process.stderr.read(STDERR_TAIL_BYTES):
            self._stderr_tail = (self._stderr_tail + chunk)[-STDERR_TAIL_BYTES:]
