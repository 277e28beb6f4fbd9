"""A long-lived sandbox's interactive calls, the executor's side: commands (foreground,
streamed or in the background with stdin and signals), files as bytes, desktop actions.

They go straight to the sandbox's agent: no task, no step loop, no lock. They run beside a task
running in the sandbox (as E2B's do: the agent serves requests concurrently), in the
sandbox's workspace, with file paths confined to the workspace and /tmp like file steps.
Each call is recorded: one entry in the sandbox's history (the memory service, under the
sandbox's id, in the background) and lines in its /tasks/agent.log.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import posixpath
import signal
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog

from corral.bounds import MAX_COMMAND_TIMEOUT_SECONDS
from corral.config import Settings
from corral.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, SandboxNotFound
from corral.steps import StepFailed, StepOutcome
from corral.steps.base import StreamName
from corral.steps.gui import GuiTool
from corral.v1 import gui_pb2_grpc, memory_pb2
from corral.v1 import sandbox_calls_pb2 as calls_pb2
from services.executor.drivers.agent_sandbox import AgentSandbox, RunningProcess
from services.executor.drivers.base import (
    WORKSPACE_DIR,
    FileRefused,
    ProcessRequest,
    ProcessResult,
    SandboxError,
    open_sandbox_dir,
)
from services.executor.gui_client import GuiClient
from services.executor.history import HistoryRecorder, history_event
from services.executor.journal import TaskJournal
from services.executor.outcome import describe_failure
from services.executor.sandboxes import ManagedSandbox, SandboxManager

log = structlog.get_logger()

TOOLS = ("shell", "python", "typescript")
DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_BACKGROUND_TIMEOUT_SECONDS = 3600.0
MAX_TIMEOUT_SECONDS = MAX_COMMAND_TIMEOUT_SECONDS
# Where absolute paths of file calls may lead (relative ones start in the workspace).
FILE_ROOTS = (WORKSPACE_DIR, "/tmp")
CHUNK_BYTES = 1024 * 1024
DESKTOP_TIMEOUT_SECONDS = 60.0
# How long a call's agent.log lines wait for others' to be written with.
LOG_BATCH_SECONDS = 0.2
# What of a call's output its history entry keeps.
HISTORY_OUTPUT_CHARS = 64 * 1024


def _result_proto(result: ProcessResult, error: str, duration: float, output: bool) -> calls_pb2.SandboxCommandResult:
    reply = calls_pb2.SandboxCommandResult(
        timed_out=result.timed_out,
        killed=result.killed,
        stdout_truncated=result.stdout_truncated,
        stderr_truncated=result.stderr_truncated,
        error=error,
        duration_seconds=duration,
    )
    if output:
        reply.stdout, reply.stderr = result.stdout, result.stderr
    if result.exit_code is not None:
        reply.exit_code = result.exit_code
    if result.signal is not None:
        reply.signal = result.signal
    return reply


def _signal_number(name: str) -> int:
    wanted = name.strip().upper()
    if wanted.isdigit():
        number = int(wanted)
        if number in {s.value for s in signal.Signals}:
            return number
    else:
        wanted = wanted if wanted.startswith("SIG") else f"SIG{wanted}"
        found = getattr(signal.Signals, wanted, None)
        if isinstance(found, signal.Signals):
            return found.value
    raise InvalidArgument(f"unknown signal {name!r} (e.g. SIGTERM, SIGINT, SIGKILL, SIGHUP)")


class BackgroundCommand:
    """A command running on after its call returned: its output (bounded by the sandbox's
    max_output_bytes per stream, as every run's) kept for watchers, its end once it comes."""

    def __init__(self, command_id: str, command: calls_pb2.SandboxCommand, on_end: Callable[[BackgroundCommand], None]) -> None:
        self.command_id = command_id
        self.command = command
        self.chunks: list[tuple[StreamName, str]] = []
        self.result: calls_pb2.SandboxCommandResult | None = None
        self.process: RunningProcess | None = None
        self._changed = asyncio.Event()
        self._on_end = on_end
        self._waiter: asyncio.Task[None] | None = None
        self.started = time.monotonic()

    def output(self, stream: StreamName, data: str) -> None:
        self.chunks.append((stream, data))
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def start(self, process: RunningProcess, describe: Callable[[ProcessResult], str]) -> None:
        self.process = process

        async def wait() -> None:
            try:
                result = await process.wait()
                error = describe(result)
            except SandboxError as exc:
                result, error = ProcessResult(exit_code=None), str(exc)
            self.result = _result_proto(result, error, time.monotonic() - self.started, output=False)
            self._notify()
            self._on_end(self)

        self._waiter = asyncio.create_task(wait(), name=f"command-{self.command_id}")

    @property
    def running(self) -> bool:
        return self.result is None

    def status(self) -> calls_pb2.SandboxCommandStatus:
        result = calls_pb2.SandboxCommandResult()
        if self.result is not None:
            result.CopyFrom(self.result)
        else:
            result.duration_seconds = time.monotonic() - self.started
        result.stdout = "".join(data for stream, data in self.chunks if stream == "stdout")
        result.stderr = "".join(data for stream, data in self.chunks if stream == "stderr")
        return calls_pb2.SandboxCommandStatus(
            command_id=self.command_id,
            state="running" if self.running else "exited",
            tool=self.command.tool,
            code=self.command.code,
            result=result,
        )

    async def watch(self) -> AsyncIterator[calls_pb2.SandboxCommandEvent]:
        """Its output from the start, live, then its end."""
        index = 0
        while True:
            changed = self._changed
            while index < len(self.chunks):
                stream, data = self.chunks[index]
                index += 1
                yield calls_pb2.SandboxCommandEvent(output=calls_pb2.SandboxCommandOutput(stream=stream, data=data))
            if self.result is not None:
                yield calls_pb2.SandboxCommandEvent(exit=self.result)
                return
            await changed.wait()

    async def stop(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._waiter


class _DesktopContext:
    """The StepContext of a desktop call (corral/steps/gui.py runs it as a gui step): the
    sandbox's gui service, screenshots kept in memory for the reply."""

    def __init__(self, stub: gui_pb2_grpc.GuiServiceAsyncStub) -> None:
        self._stub = stub
        self.png = b""

    @property
    def index(self) -> int:
        return 0

    @property
    def timeout(self) -> float:
        return DESKTOP_TIMEOUT_SECONDS

    def output(self, stream: StreamName, data: str) -> None:
        pass

    async def run_process(self, kind: Any, code: str) -> StepOutcome:
        raise StepFailed("not a desktop action")

    async def read_file(self, path: str) -> str:
        raise StepFailed("not a desktop action")

    async def write_file(self, path: str, content: str) -> str:
        raise StepFailed("not a desktop action")

    async def list_files(self, path: str) -> Any:
        raise StepFailed("not a desktop action")

    async def gui(self) -> gui_pb2_grpc.GuiServiceAsyncStub:
        return self._stub

    async def save_screenshot(self, name: str, png: bytes) -> str:
        self.png = png
        return "(in the reply)"


class SandboxCalls:
    def __init__(self, settings: Settings, sandboxes: SandboxManager, history: HistoryRecorder | None) -> None:
        self.settings = settings
        self.sandboxes = sandboxes
        self.history = history
        self._ids = itertools.count(1)
        # sandbox id -> its background commands by id, oldest first.
        self._commands: dict[str, OrderedDict[str, BackgroundCommand]] = {}
        self._gui: dict[str, GuiClient] = {}
        # agent.log lines not yet written, by sandbox (see _record).
        self._log_lines: dict[str, list[tuple[str, str, str]]] = {}
        # A removed sandbox's background commands (their output) and gui connection go with it.
        sandboxes.on_removed.append(self._forget)

    # --- the sandbox ---------------------------------------------------------------------------

    def _managed(self, sandbox_id: str) -> tuple[ManagedSandbox, AgentSandbox[Any]]:
        try:
            managed = self.sandboxes.get(sandbox_id)
        except SandboxNotFound:
            self._forget(sandbox_id)
            why = self.sandboxes.removed_reasons.get(sandbox_id, "deleted or expired?")
            raise SandboxNotFound(f"sandbox {sandbox_id} is not on this executor ({why})") from None
        sandbox = managed.sandbox
        if not isinstance(sandbox, AgentSandbox) or not sandbox.alive:
            raise FailedPrecondition(f"sandbox {sandbox_id} is not running any more")
        return managed, sandbox

    def _forget(self, sandbox_id: str) -> None:
        for command in self._commands.pop(sandbox_id, {}).values():
            asyncio.get_running_loop().create_task(command.stop())
        gui = self._gui.pop(sandbox_id, None)
        if gui is not None:
            asyncio.get_running_loop().create_task(gui.close())

    def stop(self) -> None:
        for sandbox_id in list(self._commands) + list(self._gui):
            self._forget(sandbox_id)

    # --- recording -----------------------------------------------------------------------------

    def _record(
        self,
        managed: ManagedSandbox,
        tool: str,
        action: str,
        *,
        state: str = "completed",
        exit_code: int | None = None,
        stdout: str = "",
        stderr: str = "",
        error: str = "",
        duration: float = 0.0,
    ) -> None:
        """One history entry (queued: never waits on the memory service) and agent.log lines."""
        if error and state == "completed":
            state = "failed"
        if self.history is not None:
            self.history.record(history_event(
                managed.sandbox_id,
                memory_pb2.HISTORY_KIND_RESULT,
                tool=tool,
                action=action,
                state=state,
                exit_code=exit_code,
                stdout=stdout[:HISTORY_OUTPUT_CHARS],
                stderr=stderr[:HISTORY_OUTPUT_CHARS],
                error=error,
            ), batch=True)
        summary = f"call {tool}: {action} -> {state} in {duration:.3f}s"
        if exit_code is not None:
            summary += f" (exit {exit_code})"
        if error:
            summary += f": {error}"
        # Written a little later, with the lines of the calls meanwhile: the caller does not
        # wait for the log, and a busy sandbox's log is opened a few times a second, not per call.
        pending = self._log_lines.setdefault(managed.sandbox_id, [])
        pending.append((summary, stdout, stderr))
        if len(pending) == 1:
            asyncio.get_running_loop().call_later(LOG_BATCH_SECONDS, self._write_log, managed)

    def _write_log(self, managed: ManagedSandbox) -> None:
        lines = self._log_lines.pop(managed.sandbox_id, [])
        try:
            if not lines or self.sandboxes.get(managed.sandbox_id) is not managed:
                return
        except SandboxNotFound:
            return  # the sandbox is gone, and its /tasks with it
        try:
            # The sandbox's /tasks: opened without following links each time (the sandbox
            # writes there, and nothing of ours may hold it open when the sandbox goes).
            dir_fd = open_sandbox_dir(managed.host_tasks_dir.parent, managed.host_tasks_dir.name)
        except OSError as exc:
            log.warning("cannot write the sandbox's agent.log", sandbox_id=managed.sandbox_id, error=str(exc))
            return
        try:
            journal = TaskJournal(dir_fd)
            for summary, stdout, stderr in lines:
                journal.log(summary, stdout=stdout, stderr=stderr)
            journal.close()
        finally:
            os.close(dir_fd)

    # --- commands ------------------------------------------------------------------------------

    def _process_request(self, managed: ManagedSandbox, command: calls_pb2.SandboxCommand) -> ProcessRequest:
        if command.tool not in TOOLS:
            raise InvalidArgument(f"tool must be one of {', '.join(TOOLS)}, not {command.tool!r}")
        if not command.code.strip():
            raise InvalidArgument("the command (or code) is empty")
        if command.stdin and not command.background:
            raise InvalidArgument("stdin is for background commands (send it with .../stdin)")
        timeout = command.timeout_seconds or (
            DEFAULT_BACKGROUND_TIMEOUT_SECONDS if command.background else DEFAULT_TIMEOUT_SECONDS
        )
        if not 0 < timeout <= MAX_TIMEOUT_SECONDS:
            raise InvalidArgument(f"timeout must be between 0 and {MAX_TIMEOUT_SECONDS:g} seconds, got {timeout:g}")
        for name, value in command.env.items():
            if not name or "=" in name or "\0" in name:
                raise InvalidArgument(f"env has an invalid variable name {name!r}")
            if "\0" in value:
                raise InvalidArgument(f"env: the value of {name} contains a NUL character")
        for field_name, text in (("command" if command.tool == "shell" else "code", command.code), ("cwd", command.cwd)):
            if "\0" in text:
                raise InvalidArgument(f"{field_name} contains a NUL character")
        cwd = posixpath.normpath(posixpath.join(WORKSPACE_DIR, command.cwd)) if command.cwd else WORKSPACE_DIR
        return ProcessRequest(
            kind=command.tool,  # type: ignore[arg-type]  # checked against TOOLS above
            timeout=timeout,
            code=command.code,
            env={**managed.step_env, **command.env},
            cwd=cwd,
        )

    def _describe(self, managed: ManagedSandbox, request: ProcessRequest) -> Callable[[ProcessResult], str]:
        limits = managed.sandbox.config.limits
        return lambda result: describe_failure(result, limits, request.timeout, request.kind)

    async def run_command(self, call: calls_pb2.RunSandboxCommandRequest) -> calls_pb2.SandboxCommandEvent:
        """A foreground command's end, with its output; a background command's id."""
        managed, sandbox = self._managed(call.sandbox_id)
        command = call.command
        request = self._process_request(managed, command)
        if command.background:
            return calls_pb2.SandboxCommandEvent(started=await self._start_background(managed, sandbox, request, command))
        started = time.monotonic()
        result = await sandbox.run(request, lambda stream, data: None)
        reply = _result_proto(result, self._describe(managed, request)(result), time.monotonic() - started, output=True)
        self._record_command(managed, command, result, reply)
        return calls_pb2.SandboxCommandEvent(exit=reply)

    async def stream_command(self, call: calls_pb2.StreamSandboxCommandRequest) -> AsyncIterator[calls_pb2.SandboxCommandEvent]:
        """`started`, the command's output as it comes, then its end (without the output)."""
        managed, sandbox = self._managed(call.sandbox_id)
        command = call.command
        if command.background:
            raise InvalidArgument("a background command is not streamed: follow it with .../output")
        request = self._process_request(managed, command)
        started = time.monotonic()
        queue: asyncio.Queue[tuple[StreamName, str] | None] = asyncio.Queue()
        process = await sandbox.start_process(request, lambda stream, data: queue.put_nowait((stream, data)))
        waiter = asyncio.create_task(process.wait())
        waiter.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            # At once, so that the caller's stream opens before any output (or a refusal
            # before it, as an error of the call).
            yield calls_pb2.SandboxCommandEvent(started="")
            while (item := await queue.get()) is not None:
                stream, data = item
                yield calls_pb2.SandboxCommandEvent(output=calls_pb2.SandboxCommandOutput(stream=stream, data=data))
            result = await waiter
        finally:
            if not waiter.done():  # the caller went away: the command goes too
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await waiter
        reply = _result_proto(result, self._describe(managed, request)(result), time.monotonic() - started, output=False)
        self._record_command(managed, command, result, reply)
        yield calls_pb2.SandboxCommandEvent(exit=reply)

    def _record_command(
        self,
        managed: ManagedSandbox,
        command: calls_pb2.SandboxCommand,
        result: ProcessResult,
        reply: calls_pb2.SandboxCommandResult,
        note: str = "",
    ) -> None:
        self._record(
            managed,
            command.tool,
            command.code + note,
            exit_code=reply.exit_code if reply.HasField("exit_code") else None,
            stdout=result.stdout,
            stderr=result.stderr,
            error=reply.error,
            duration=reply.duration_seconds,
        )

    async def _start_background(
        self,
        managed: ManagedSandbox,
        sandbox: AgentSandbox[Any],
        request: ProcessRequest,
        command: calls_pb2.SandboxCommand,
    ) -> str:
        commands = self._commands.setdefault(managed.sandbox_id, OrderedDict())
        limit = self.settings.sandbox_background_commands
        if len(commands) >= limit:
            ended = next((cid for cid, c in commands.items() if not c.running), None)
            if ended is None:
                raise ResourceExhausted(
                    f"sandbox {managed.sandbox_id} has {len(commands)} background commands running "
                    f"(at most {limit}); wait for or kill one"
                )
            del commands[ended]
        command_id = f"cmd-{next(self._ids)}"

        def on_end(done: BackgroundCommand) -> None:
            result = done.result
            assert result is not None
            self._record(
                managed,
                command.tool,
                f"{command.code} (background {command_id})",
                exit_code=result.exit_code if result.HasField("exit_code") else None,
                stdout="".join(d for s, d in done.chunks if s == "stdout"),
                stderr="".join(d for s, d in done.chunks if s == "stderr"),
                error=result.error,
                duration=result.duration_seconds,
            )

        background = BackgroundCommand(command_id, command, on_end)
        process = await sandbox.start_process(request, background.output, stdin=command.stdin)
        background.start(process, self._describe(managed, request))
        commands[command_id] = background
        return command_id

    def _background(self, sandbox_id: str, command_id: str) -> tuple[ManagedSandbox, BackgroundCommand]:
        managed, _ = self._managed(sandbox_id)
        commands = self._commands.get(sandbox_id)
        found = commands.get(command_id) if commands is not None else None
        if found is None:
            raise NotFound(f"sandbox {sandbox_id} has no background command {command_id!r}")
        return managed, found

    def command_status(self, call: calls_pb2.GetSandboxCommandRequest) -> calls_pb2.SandboxCommandStatus:
        return self._background(call.sandbox_id, call.command_id)[1].status()

    async def watch_command(self, call: calls_pb2.WatchSandboxCommandRequest) -> AsyncIterator[calls_pb2.SandboxCommandEvent]:
        _, command = self._background(call.sandbox_id, call.command_id)
        async for event in command.watch():
            yield event

    async def write_stdin(self, call: calls_pb2.WriteSandboxCommandStdinRequest) -> None:
        _, command = self._background(call.sandbox_id, call.command_id)
        if not command.running or command.process is None:
            raise FailedPrecondition(f"command {call.command_id} has ended")
        if not command.command.stdin:
            raise FailedPrecondition(f"command {call.command_id} was not started with stdin: true")
        await command.process.write_stdin(call.data, call.close)  # FileRefused: ended meanwhile, too much queued

    async def signal_command(self, call: calls_pb2.SignalSandboxCommandRequest) -> None:
        managed, command = self._background(call.sandbox_id, call.command_id)
        number = 0 if call.kill else _signal_number(call.signal)
        if not command.running or command.process is None:
            raise FailedPrecondition(f"command {call.command_id} has ended")
        if call.kill:
            await command.process.kill()
        else:
            await command.process.signal(number)
        what = "kill" if call.kill else signal.Signals(number).name
        self._record(managed, "signal", f"{what} {call.command_id}")

    # --- files ---------------------------------------------------------------------------------

    async def read_file(self, call: calls_pb2.ReadSandboxFileRequest) -> AsyncIterator[calls_pb2.ReadSandboxFileResponse]:
        """The file in chunks, as large as it was at the first: a file growing meanwhile
        cannot make the read endless."""
        managed, sandbox = self._managed(call.sandbox_id)
        limit = self.settings.sandbox_file_max_bytes
        started = time.monotonic()
        data, size, eof = await sandbox.read_chunk(call.path, 0, CHUNK_BYTES, WORKSPACE_DIR, FILE_ROOTS)
        if size > limit:
            raise InvalidArgument(f"{call.path} is {size} bytes, larger than the limit of {limit} bytes")
        sent = len(data)
        yield calls_pb2.ReadSandboxFileResponse(data=data[:size], size=size)
        while not eof and sent < size:
            data, _, eof = await sandbox.read_chunk(call.path, sent, min(CHUNK_BYTES, size - sent), WORKSPACE_DIR, FILE_ROOTS)
            if not data:
                break
            sent += len(data)
            yield calls_pb2.ReadSandboxFileResponse(data=data)
        self._record(managed, "read_file", f"{call.path} ({sent} bytes)", duration=time.monotonic() - started)

    async def write_file(self, target: calls_pb2.SandboxFileTarget, chunks: AsyncIterator[bytes]) -> calls_pb2.SandboxFileInfo:
        """Writes the chunks to a file beside the target, renamed over it at the end: a reader
        never sees half a file, and a write that fails (too large, the caller gone) leaves the
        old one as it was."""
        managed, sandbox = self._managed(target.sandbox_id)
        limit = self.settings.sandbox_file_max_bytes
        started = time.monotonic()
        head, name = posixpath.split(target.path.rstrip("/"))
        if not name or name in (".", ".."):
            raise InvalidArgument(f"{target.path!r} names no file")
        partial = posixpath.join(head, f".{name}.part-{next(self._ids)}")
        where = (WORKSPACE_DIR, FILE_ROOTS, target.path)
        written, append = 0, False
        try:
            async for chunk in chunks:
                for start in range(0, len(chunk), CHUNK_BYTES):
                    piece = chunk[start : start + CHUNK_BYTES]
                    _, written = await sandbox.write_chunk(partial, piece, append, limit, *where)
                    append = True
            path, written = await sandbox.write_chunk(partial, b"", append, limit, *where, commit=True)
        except BaseException as exc:
            if append:
                with contextlib.suppress(Exception):
                    await asyncio.shield(sandbox.remove(partial, WORKSPACE_DIR, FILE_ROOTS))
            if isinstance(exc, FileRefused):
                # The words name the file asked for, not the one written beside it.
                error = str(exc).replace(partial, target.path).replace(posixpath.basename(partial), name)
                self._record(managed, "write_file", target.path, error=error, duration=time.monotonic() - started)
                raise FileRefused(error) from None
            raise
        self._record(managed, "write_file", f"{target.path} ({written} bytes)", duration=time.monotonic() - started)
        return calls_pb2.SandboxFileInfo(name=posixpath.basename(path), path=path, type="file", size=written, mtime=time.time())

    async def operate_file(self, call: calls_pb2.OperateSandboxFileRequest) -> calls_pb2.OperateSandboxFileResponse:
        managed, sandbox = self._managed(call.sandbox_id)
        operation = call.WhichOneof("operation")
        started = time.monotonic()
        reply = calls_pb2.OperateSandboxFileResponse()
        where = (WORKSPACE_DIR, FILE_ROOTS)
        try:
            if operation == "list":
                listing = await sandbox.list_files(call.list or ".", self.settings.max_list_entries, *where)
                reply.path, reply.truncated = listing.path, listing.truncated
                reply.entries.extend(
                    calls_pb2.SandboxFileInfo(
                        name=e.name, path=posixpath.join(listing.path, e.name), type=e.type, size=e.size, mtime=e.mtime
                    )
                    for e in listing.entries
                )
                action = call.list
            elif operation == "stat":
                reply.path, entry = await sandbox.stat(call.stat, *where)
                reply.file.CopyFrom(
                    calls_pb2.SandboxFileInfo(name=entry.name, path=reply.path, type=entry.type, size=entry.size, mtime=entry.mtime)
                )
                action = call.stat
            elif operation == "mkdir":
                reply.path, action = await sandbox.make_dir(call.mkdir, *where), call.mkdir
            elif operation == "remove":
                reply.path, action = await sandbox.remove(call.remove, *where), call.remove
            elif operation == "rename":
                rename = call.rename
                if not rename.source or not rename.target:
                    raise InvalidArgument("rename needs both from and to")
                reply.path = await sandbox.rename(rename.source, rename.target, *where)
                action = f"{rename.source} -> {rename.target}"
            else:
                raise InvalidArgument("no file operation given (list, stat, mkdir, remove or rename)")
        except FileRefused as exc:
            self._record(managed, str(operation), "", error=str(exc), duration=time.monotonic() - started)
            raise
        if operation != "stat":  # a stat changes nothing and is asked often: not worth an entry
            self._record(managed, str(operation), action, duration=time.monotonic() - started)
        return reply

    # --- desktop -------------------------------------------------------------------------------

    async def desktop_action(self, call: calls_pb2.RunSandboxDesktopActionRequest) -> calls_pb2.RunSandboxDesktopActionResponse:
        managed, _ = self._managed(call.sandbox_id)
        if managed.desktop is None:
            raise FailedPrecondition(f"sandbox {call.sandbox_id} has no desktop (create it with desktop: true)")
        tool = GuiTool()
        tool.check(call.action, "action")  # InvalidTask: a 400 naming the field
        gui = self._gui.get(call.sandbox_id)
        if gui is None:
            try:
                gui = self._gui[call.sandbox_id] = GuiClient(managed.desktop.host_run_dir)
            except StepFailed as exc:
                raise FailedPrecondition(str(exc)) from None
        context = _DesktopContext(gui.stub)
        started = time.monotonic()
        try:
            outcome = await tool.run(call.action, context)
        except StepFailed as exc:
            self._record(managed, "gui", tool.describe(call.action), error=str(exc), duration=time.monotonic() - started)
            raise FailedPrecondition(str(exc)) from None
        self._record(managed, "gui", tool.describe(call.action), stdout=outcome.stdout, duration=time.monotonic() - started)
        return calls_pb2.RunSandboxDesktopActionResponse(result=outcome.stdout, png=context.png)
