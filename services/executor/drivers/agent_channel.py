"""The executor's side of the in-sandbox agent's JSON-lines protocol (sandbox/runtime/agent.py),
over any byte stream: request ids, streamed output, replies, and failing what is pending when
the stream ends. The docker driver feeds it the container's demultiplexed stdout.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from services.executor.drivers.base import (
    FileRefused,
    OutputCallback,
    SandboxError,
    StreamName,
)

log = structlog.get_logger()

# Extra time we give the agent to report a step after the step's own timeout.
AGENT_GRACE_SECONDS = 15.0


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
        self._buffer = b""
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.failure: SandboxError | None = None
        self._lock = asyncio.Lock()
        self.log = log.bind(**log_context)

    # --- incoming ----------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes of the agent's stdout; complete lines are dispatched."""
        self._buffer += data
        while (newline := self._buffer.find(b"\n")) >= 0:
            line, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError:
                self.log.warning("bad line from the sandbox agent", line=line[:200])
                continue
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
                reply = await asyncio.wait_for(asyncio.shield(pending.done), timeout + AGENT_GRACE_SECONDS)
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
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise SandboxError("the sandbox agent stopped answering") from None
        finally:
            self._replies.pop(request_id, None)
        if reply.get("type") == "error":
            raise FileRefused(str(reply.get("error")))
        return reply
