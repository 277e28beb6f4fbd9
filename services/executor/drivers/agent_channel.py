"""The executor's side of the in-sandbox agent's JSON-lines protocol (sandbox/runtime/agent.py),
over any byte stream: request ids, streamed output, replies, and failing what is pending when
the stream ends. The docker driver feeds it the container's demultiplexed stdout, the bubblewrap
driver bwrap's stdout.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from services.executor.drivers.base import (
    MIB,
    FileRefused,
    OutputCallback,
    ProcessRequest,
    ProcessResult,
    SandboxError,
    StreamName,
)

log = structlog.get_logger()

# Extra time we give the agent to report a step after the step's own timeout.
AGENT_GRACE_SECONDS = 15.0
# The agent's replies carry whole files; keep the line limit above the largest one. A longer
# line fails the channel: a step running as the agent's uid could write into the agent's stdout.
MAX_LINE_BYTES = 64 * MIB


class PendingRun:
    def __init__(self, on_output: OutputCallback) -> None:
        self.on_output = on_output
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()


class AgentChannel:
    """Matches the agent's replies to requests; `send_line` writes one line to the agent."""

    def __init__(self, send_line: Callable[[bytes], Awaitable[None]], log_context: dict[str, str]) -> None:
        self._send_line = send_line
        self._ids = itertools.count(1)
        self._runs: dict[int, PendingRun] = {}
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        # The pieces of the incomplete line received so far, joined once its newline arrives.
        self._partial: list[bytes] = []
        self._partial_size = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.failure: SandboxError | None = None
        self._lock = asyncio.Lock()
        self.log = log.bind(**log_context)

    # --- incoming ----------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes of the agent's stdout; complete lines are dispatched."""
        if self.failure is not None:
            return
        start = 0
        while (newline := data.find(b"\n", start)) >= 0:
            size = self._partial_size + newline - start
            if size > MAX_LINE_BYTES:
                self._oversized(size)
                return
            if self._partial:
                self._partial.append(data[start:newline])
                line = b"".join(self._partial)
                self._partial.clear()
                self._partial_size = 0
            else:
                line = data[start:newline]
            start = newline + 1
            self._line(line)
            if self.failure is not None:
                return
        if start < len(data):
            self._partial_size += len(data) - start
            if self._partial_size > MAX_LINE_BYTES:
                self._oversized(self._partial_size)
                return
            self._partial.append(data[start:] if start else data)

    def _oversized(self, size: int) -> None:
        self._partial.clear()
        self._partial_size = 0
        self.log.warning("oversized message from the sandbox agent", size=size)
        self.fail(
            SandboxError(
                f"the sandbox agent sent an oversized message (over {MAX_LINE_BYTES // MIB} MiB "
                "in one line); the sandbox's protocol stream cannot be trusted any more"
            )
        )

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            message = json.loads(line)
        except ValueError:
            self.log.warning("bad line from the sandbox agent", line=line[:200])
            return
        if isinstance(message, dict):
            self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "ready":
            if not self.ready.done():
                self.ready.set_result(None)
            return
        request_id = message.get("id")
        if not isinstance(request_id, int):
            return
        run = self._runs.get(request_id)
        if run is not None:
            if kind == "output":
                stream: StreamName = "stderr" if message.get("stream") == "stderr" else "stdout"
                data = str(message.get("data", ""))
                (run.stderr if stream == "stderr" else run.stdout).append(data)
                try:
                    run.on_output(stream, data)
                except Exception:
                    self.log.exception("output callback failed")
            elif kind == "exit" and not run.done.done():
                run.done.set_result(message)
            return
        reply = self._replies.get(request_id)
        if reply is not None and not reply.done():
            reply.set_result(message)

    def fail(self, error: SandboxError) -> None:
        """The stream ended: every waiter gets `error`, and so does every later request."""
        if self.failure is None:
            self.failure = error
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved; whoever waits for ready reports it
        for run in self._runs.values():
            if not run.done.done():
                run.done.set_exception(error)
        for reply in self._replies.values():
            if not reply.done():
                reply.set_exception(error)

    # --- outgoing ----------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        if self.failure is not None:
            raise self.failure
        async with self._lock:
            await self._send_line(json.dumps(message).encode() + b"\n")

    async def run(self, message: dict[str, Any], on_output: OutputCallback, timeout: float) -> tuple[dict[str, Any], PendingRun]:
        """Sends a run request and waits for its exit report; cancelling kills the step."""
        request_id = next(self._ids)
        pending = PendingRun(on_output)
        self._runs[request_id] = pending
        try:
            await self.send({**message, "id": request_id})
            try:
                # asyncio.timeout, not wait_for: on 3.11, wait_for loses a cancellation that
                # arrives as the awaited future completes.
                async with asyncio.timeout(timeout + AGENT_GRACE_SECONDS):
                    reply = await asyncio.shield(pending.done)
            except TimeoutError:
                raise SandboxError("the sandbox agent stopped answering") from None
            except asyncio.CancelledError:
                # Stop the step now; the caller may keep using the sandbox.
                try:
                    await self.send({"id": next(self._ids), "op": "kill", "target": request_id})
                except (SandboxError, ConnectionError):
                    pass
                raise
        finally:
            self._runs.pop(request_id, None)
        return reply, pending

    async def request(self, message: dict[str, Any], timeout: float = AGENT_GRACE_SECONDS + 30) -> dict[str, Any]:
        """A one-reply request (read_file, write_file, chdir); an agent error is FileRefused."""
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        try:
            await self.send({**message, "id": request_id})
            async with asyncio.timeout(timeout):
                reply = await future
        except TimeoutError:
            raise SandboxError("the sandbox agent stopped answering") from None
        finally:
            self._replies.pop(request_id, None)
        if reply.get("type") == "error":
            raise FileRefused(str(reply.get("error")))
        return reply

    # --- operations --------------------------------------------------------------------------

    async def run_process(
        self,
        request: ProcessRequest,
        env: dict[str, str],
        limits: dict[str, int],
        default_max_output: int,
        on_output: OutputCallback,
    ) -> tuple[ProcessResult, dict[str, Any]]:
        """Runs one step; returns its result and the agent's raw exit report (limit_events...).

        `limits` are the agent's per-process rlimits (memory_mb, max_processes,
        max_file_size_mb; 0 is none); `default_max_output` applies when the request sets none.
        """
        message = {
            "op": "run",
            "kind": request.kind,
            "command": request.code,
            "code": request.code,
            "argv": list(request.argv),
            "env": env,
            "cwd": request.cwd,
            "timeout": request.timeout,
            "max_output_bytes": request.max_output_bytes or default_max_output,
            "limits": limits,
        }
        reply, pending = await self.run(message, on_output, request.timeout)
        result = ProcessResult(
            exit_code=reply.get("exit_code"),
            signal=reply.get("signal"),
            timed_out=bool(reply.get("timed_out")),
            killed=bool(reply.get("killed")),
            stdout="".join(pending.stdout),
            stderr="".join(pending.stderr),
            stdout_truncated=bool(reply.get("stdout_truncated")),
            stderr_truncated=bool(reply.get("stderr_truncated")),
            error=str(reply.get("error") or ""),
        )
        return result, reply

    async def read_file(self, path: str, max_bytes: int, cwd: str = "") -> str:
        reply = await self.request({"op": "read_file", "path": path, "max_bytes": max_bytes, "cwd": cwd})
        return str(reply.get("content", ""))

    async def write_file(self, path: str, content: str, max_bytes: int, cwd: str = "") -> str:
        reply = await self.request(
            {"op": "write_file", "path": path, "content": content, "max_bytes": max_bytes, "cwd": cwd}
        )
        return str(reply.get("path", path))
