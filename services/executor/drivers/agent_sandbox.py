"""The one agent client: the `Sandbox` the executor uses, on top of any driver's `Transport`.

Everything about talking to the in-sandbox agent lives here once, whatever isolates it: the
environment of every process (base.sandbox_env), the translation of a sandbox's limits into the
agent's per-process rlimits, run / read_file / write_file, handing a warm sandbox its task
(claim) and giving its directory back (close), and the words for a sandbox that died. The
protocol itself is corral/agent_protocol.py, spoken through AgentChannel.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import structlog

from corral import agent_protocol as protocol
from corral.network_rules import NetworkRules
from corral.steps.base import FileEntry, Listing
from services.executor.drivers.agent_channel import AgentChannel, PendingRun
from services.executor.drivers.base import (
    FileRefused,
    OutputCallback,
    ProcessRequest,
    ProcessResult,
    Sandbox,
    SandboxConfig,
    SandboxError,
    sandbox_env,
)
from services.executor.drivers.faults import limit_error
from services.executor.drivers.transport import Transport
from services.executor.drivers.warm_pool import make_in_slot, remove_slot, return_task_dir
from services.executor.network.status import NetworkStatus

log = structlog.get_logger()

T = TypeVar("T", bound=Transport)


class AgentSandbox(Sandbox, Generic[T]):
    """A sandbox whose agent is reached through `transport`.

    `warm_slot`: set for a warm-pool sandbox, started before its task with the empty host slot
    directory mounted at /tasks; claim() hands it a task.
    """

    def __init__(self, transport: T, config: SandboxConfig, warm_slot: Path | None = None) -> None:
        self.transport = transport
        self.config = config
        self.warm_slot = warm_slot
        self.claimed = False  # a warm sandbox handed to a task
        self._closed = False
        self.ended = False  # close() returned: its processes gone, its task directory back
        self._reader: asyncio.Task[None] | None = None
        self.log = log.bind(task_id=config.task_id)
        self.channel = AgentChannel(self.transport.write, {"task_id": config.task_id})
        self.agent_pid: int | None = None  # the agent's pid inside the sandbox

    @property
    def alive(self) -> bool:
        return (
            not self._closed
            and self.channel.failure is None
            and self._reader is not None
            and not self._reader.done()
            and self.transport.running
        )

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts the transport and waits for the agent's ready message (its version checked).
        On failure the caller closes the sandbox."""
        await self.transport.start()
        self._reader = asyncio.create_task(self._read())
        timeout = self.transport.ready_timeout
        try:
            # asyncio.timeout, not wait_for: on 3.11, wait_for loses a cancellation that arrives
            # as the awaited future completes (a warm pool stopping then waited forever).
            async with asyncio.timeout(timeout):
                ready = await asyncio.shield(self.channel.ready)
        except TimeoutError:
            raise SandboxError(f"{self.transport.what} did not start within {timeout:g}s") from None
        self.agent_pid = ready.pid
        await self.transport.started()

    async def start_or_close(self) -> Self:
        """start(), closing the sandbox (every process, its warm slot) when that fails or is
        cancelled; returns the started sandbox."""
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def claim(self, config: SandboxConfig, prepare_dir: Callable[[Path], None]) -> None:
        """Hands this warm sandbox a task: its directory is made in the sandbox's slot (by
        `prepare_dir`), and the agent changes into it with the task's environment. Raises
        SandboxError."""
        assert self.warm_slot is not None and not self.claimed
        self.transport.apply_limits(config.limits)
        self.config = config
        self.claimed = True
        self.log = log.bind(task_id=config.task_id)
        self.channel.log = self.channel.log.bind(task_id=config.task_id)
        self.transport.log = self.transport.log.bind(task_id=config.task_id)
        make_in_slot(config.host_task_dir, self.warm_slot, config.task_id, prepare_dir)
        env = {key: self._agent_value(key, value) for key, value in sandbox_env(config).items()}
        try:
            await self.channel.request(
                protocol.ChdirRequest(path=self.transport.agent_path(config.task_dir), env=env)
            )
        except FileRefused as exc:
            raise SandboxError(f"the warm sandbox could not change into its task directory: {exc}") from exc
        self.log.debug("warm sandbox claimed")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        removable = False
        try:
            await self.transport.kill()
        finally:
            try:
                if self._reader is not None:
                    self._reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await self._reader
                self.channel.fail(SandboxError("the sandbox was closed"))
                if self.warm_slot is not None:
                    # Every process is gone: the task directory can go back in place (in a
                    # thread: a copy out of its own filesystem takes the event loop for tens
                    # of ms, every other task's events waited), and the task be told it ended
                    # before the rest: the cgroup's removal, the slot's unmount.
                    task_dir = self.config.host_task_dir if self.claimed else None
                    removable = await asyncio.shield(
                        asyncio.to_thread(return_task_dir, self.warm_slot, task_dir, self.config.task_id)
                    )
                    self._files_back()
            finally:
                await asyncio.shield(self.transport.clean_up())
                if removable and self.warm_slot is not None:
                    await asyncio.shield(asyncio.to_thread(remove_slot, self.warm_slot))
                self.ended = True

    def _files_back(self) -> None:
        callback, self.on_files_back = self.on_files_back, None
        if callback is not None:
            try:
                callback()
            except Exception:
                self.log.exception("the files-back callback failed")

    async def update_network(self, rules: NetworkRules) -> None:
        if not self.config.network:
            await super().update_network(rules)
        await self.transport.update_network(rules)

    async def network_status(self) -> NetworkStatus:
        return await self.transport.network_status()

    async def _read(self) -> None:
        """Feeds the agent's bytes to the channel; a stream that ends fails it, saying why."""
        try:
            while chunk := await self.transport.read():
                self.channel.feed(chunk)
        except Exception as exc:  # a broken stream is an ended one
            self.log.warning("the sandbox's stream broke", error=f"{type(exc).__name__}: {exc}")
        if self._closed:
            return
        try:
            reason = await self.transport.death_reason()
        except Exception as exc:
            reason = "the sandbox ended unexpectedly"
            self.log.warning("could not tell why the sandbox ended", error=f"{type(exc).__name__}: {exc}")
        self.log.warning("sandbox ended", reason=reason)
        self.channel.fail(SandboxError(reason))

    # --- operations --------------------------------------------------------------------------

    def _agent_value(self, key: str, value: str) -> str:
        """An environment value as the agent's processes should see it (paths mapped)."""
        return self.transport.agent_path(value) if key in ("HOME", "CORRAL_TASK_DIR") else value

    def process_env(self, request: ProcessRequest) -> dict[str, str]:
        base = {key: self._agent_value(key, value) for key, value in sandbox_env(self.config).items()}
        return {**base, **self.config.env, **request.env}

    def process_limits(self) -> protocol.ProcessLimits:
        """The agent's per-process rlimits for this sandbox's limits."""
        limits = self.config.limits
        if self.transport.cgroup_limits:
            # Memory and processes are the sandbox's cgroup limits; file size stays an rlimit.
            return protocol.ProcessLimits(max_file_size_mb=limits.max_file_size_mb)
        return protocol.ProcessLimits(
            memory_mb=limits.memory_mb,
            max_processes=limits.max_processes,
            max_file_size_mb=limits.max_file_size_mb,
        )

    def _run_request(self, request: ProcessRequest, stdin: bool = False) -> protocol.RunRequest:
        limits = self.config.limits
        return protocol.RunRequest(
            kind=request.kind,
            code=request.code,
            argv=list(request.argv),
            env=self.process_env(request),
            cwd=self.transport.agent_path(request.cwd) if request.cwd else "",
            timeout=float(request.timeout),
            max_output_bytes=request.max_output_bytes or limits.max_output_bytes,
            limits=self.process_limits(),
            stdin=stdin,
        )

    def _result(self, reply: protocol.ExitReply, pending: PendingRun) -> ProcessResult:
        limits = self.config.limits
        result = ProcessResult(
            exit_code=reply.exit_code,
            signal=reply.signal,
            timed_out=reply.timed_out,
            killed=reply.killed,
            stdout="".join(pending.stdout),
            stderr="".join(pending.stderr),
            stdout_truncated=reply.stdout_truncated or pending.truncated["stdout"],
            stderr_truncated=reply.stderr_truncated or pending.truncated["stderr"],
            error=reply.error,
        )
        if self.transport.cgroup_limits:
            budget = self.transport.pid_budget_hit() if reply.limit_events.get("pids_max") else 0
            result.error = result.error or limit_error(
                result, reply.limit_events, limits, self.transport.tmp_size_mb, budget
            )
        return result

    async def run(self, request: ProcessRequest, on_output: OutputCallback) -> ProcessResult:
        reply, pending = await self.channel.run(self._run_request(request), on_output)
        return self._result(reply, pending)

    async def start_process(
        self, request: ProcessRequest, on_output: OutputCallback, stdin: bool = False
    ) -> RunningProcess:
        """Starts a process and returns at once: a handle to wait for it, feed its stdin
        (with `stdin`), signal or kill it."""
        run = self._run_request(request, stdin)
        pending = await self.channel.start(run, on_output)
        return RunningProcess(self, run, pending)

    # --- files as bytes (sandbox calls) -------------------------------------------------------

    def _located(self, path: str, cwd: str, roots: Sequence[str]) -> dict[str, Any]:
        return {"path": self.transport.agent_path(path), "cwd": self._agent_cwd(cwd), "roots": self._agent_roots(roots)}

    async def read_chunk(
        self, path: str, offset: int, length: int, cwd: str = "", roots: Sequence[str] = ()
    ) -> tuple[bytes, int, bool]:
        """Up to `length` bytes of a file from `offset`: (data, the file's size, at its end)."""
        reply = await self.channel.request(
            protocol.ReadBytesRequest(offset=offset, length=length, **self._located(path, cwd, roots))
        )
        try:
            data = base64.b64decode(reply.data.encode("ascii"))  # bytes decode 3x faster than str
        except ValueError:
            raise SandboxError("the sandbox agent sent a chunk that is not base64") from None
        # The reply is the sandbox's word: no more than asked for.
        return data[: max(length, 0)], reply.size, reply.eof or len(data) < length

    async def write_chunk(
        self,
        path: str,
        data: bytes,
        append: bool,
        max_bytes: int,
        cwd: str = "",
        roots: Sequence[str] = (),
        rename_to: str = "",
        commit: bool = False,
    ) -> tuple[str, int]:
        """Writes `data` as the file's content, or after it (`append`); with `commit`, renames
        it to `rename_to` (checked with each chunk) after. Returns (its path, its size)."""
        reply = await self.channel.request(
            protocol.WriteBytesRequest(
                data=base64.b64encode(data).decode("ascii"),
                append=append,
                max_bytes=max_bytes,
                rename_to=self.transport.agent_path(rename_to) if rename_to else "",
                commit=commit,
                **self._located(path, cwd, roots),
            )
        )
        return self.transport.sandbox_path(reply.path or path), reply.size

    async def stat(self, path: str, cwd: str = "", roots: Sequence[str] = ()) -> tuple[str, FileEntry]:
        reply = await self.channel.request(protocol.StatRequest(**self._located(path, cwd, roots)))
        e = reply.entry
        return self.transport.sandbox_path(reply.path), FileEntry(name=e.name, type=e.type, size=e.size, mtime=e.mtime)

    async def make_dir(self, path: str, cwd: str = "", roots: Sequence[str] = ()) -> str:
        reply = await self.channel.request(protocol.MkdirRequest(**self._located(path, cwd, roots)))
        return self.transport.sandbox_path(reply.path)

    async def remove(self, path: str, cwd: str = "", roots: Sequence[str] = ()) -> str:
        reply = await self.channel.request(protocol.RemoveRequest(**self._located(path, cwd, roots)))
        return self.transport.sandbox_path(reply.path)

    async def rename(self, path: str, target: str, cwd: str = "", roots: Sequence[str] = ()) -> str:
        reply = await self.channel.request(
            protocol.RenameRequest(target=self.transport.agent_path(target), **self._located(path, cwd, roots))
        )
        return self.transport.sandbox_path(reply.path)

    async def read_file(self, path: str, max_bytes: int, cwd: str = "", roots: Sequence[str] = ()) -> str:
        reply = await self.channel.request(
            protocol.ReadFileRequest(
                path=self.transport.agent_path(path),
                max_bytes=max_bytes,
                cwd=self._agent_cwd(cwd),
                roots=self._agent_roots(roots),
            )
        )
        # The reply is the sandbox's word: the cap holds whatever the agent says. (Characters,
        # not bytes: each byte of the file decodes to at most one, U+FFFD included.)
        if len(reply.content) > max_bytes:
            raise FileRefused(f"{path} is larger than the read limit of {max_bytes} bytes")
        return reply.content

    async def write_file(
        self, path: str, content: str, max_bytes: int, cwd: str = "", roots: Sequence[str] = ()
    ) -> str:
        reply = await self.channel.request(
            protocol.WriteFileRequest(
                path=self.transport.agent_path(path),
                content=content,
                max_bytes=max_bytes,
                cwd=self._agent_cwd(cwd),
                roots=self._agent_roots(roots),
            )
        )
        return self.transport.sandbox_path(reply.path or path)

    async def list_files(self, path: str, max_entries: int, cwd: str = "", roots: Sequence[str] = ()) -> Listing:
        reply = await self.channel.request(
            protocol.ListFilesRequest(
                path=self.transport.agent_path(path),
                max_entries=max_entries,
                cwd=self._agent_cwd(cwd),
                roots=self._agent_roots(roots),
            )
        )
        # The reply is the sandbox's word: no more entries than asked for, whatever it sent.
        kept = reply.entries[: max(max_entries, 0)]
        entries = [FileEntry(name=e.name, type=e.type, size=e.size, mtime=e.mtime) for e in kept]
        truncated = reply.truncated or len(kept) < len(reply.entries)
        return Listing(path=self.transport.sandbox_path(reply.path), entries=entries, truncated=truncated)

    def _agent_cwd(self, cwd: str) -> str:
        return self.transport.agent_path(cwd) if cwd else ""

    def _agent_roots(self, roots: Sequence[str]) -> list[str]:
        return [self.transport.agent_path(root) for root in roots]


class RunningProcess:
    """A process started with AgentSandbox.start_process."""

    def __init__(self, sandbox: AgentSandbox[Any], request: protocol.RunRequest, pending: PendingRun) -> None:
        self.sandbox = sandbox
        self.request = request
        self.pending = pending

    async def wait(self) -> ProcessResult:
        """Its end (cancelling kills it)."""
        reply = await self.sandbox.channel.finish(self.request, self.pending)
        return self.sandbox._result(reply, self.pending)

    async def write_stdin(self, data: bytes, close: bool = False) -> None:
        """Queues `data` for its stdin (FileRefused: not started with stdin, or ended)."""
        await self.sandbox.channel.request(
            protocol.StdinRequest(target=self.request.id, data=base64.b64encode(data).decode("ascii"), close=close)
        )

    async def signal(self, number: int) -> None:
        await self.sandbox.channel.request(protocol.SignalRequest(target=self.request.id, signal=number))

    async def kill(self) -> None:
        """Its whole process tree, at once; wait() then reports it killed."""
        await self.sandbox.channel.kill(self.request.id)
