"""The executor's side of the agent protocol (corral/agent_protocol.py) over any byte stream:
request ids, streamed output, typed replies, the protocol version check, the line cap, and
failing what is pending when the stream ends. It knows no operation by name: AgentSandbox
(agent_sandbox.py) builds the requests; transports only carry the bytes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

from corral import agent_protocol as protocol
from services.executor.drivers.base import (
    MIB,
    FileMissing,
    FileRefused,
    OutputCallback,
    SandboxError,
    StreamName,
)

log = structlog.get_logger()

# Extra time we give the agent to report a step after the step's own timeout.
AGENT_GRACE_SECONDS = 15.0
# The agent's replies carry whole files; keep the line limit above the largest one. A longer
# line fails the channel: a step running as the agent's uid could write into the agent's stdout.
MAX_LINE_BYTES = protocol.MAX_LINE_BYTES

R = TypeVar("R", bound=protocol.Reply)


class PendingRun:
    """One run's output as received, capped here at `max_output` characters per stream.

    The agent caps output too, but a step can reach what the agent sends; so the executor keeps
    (and streams) no more than the cap, and flags the stream truncated itself, whatever the
    agent's exit report says. (Characters: each output byte decodes to at most one.)
    """

    def __init__(self, on_output: OutputCallback, max_output: int) -> None:
        self.on_output = on_output
        self.max_output = max_output
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.kept = {"stdout": 0, "stderr": 0}
        self.truncated = {"stdout": False, "stderr": False}
        self.done: asyncio.Future[protocol.ExitReply] = asyncio.get_running_loop().create_future()

    def take(self, stream: StreamName, data: str) -> str:
        """What of `data` fits under the cap (recorded), '' when nothing does."""
        room = self.max_output - self.kept[stream]
        if len(data) > room:
            data = data[: max(room, 0)]
            self.truncated[stream] = True
        if data:
            self.kept[stream] += len(data)
            (self.stderr if stream == "stderr" else self.stdout).append(data)
        return data


class AgentChannel:
    """Matches the agent's replies to requests; `send_line` writes one line to the agent."""

    def __init__(self, send_line: Callable[[bytes], Awaitable[None]], log_context: dict[str, str]) -> None:
        self._send_line = send_line
        self._ids = itertools.count(1)
        self._runs: dict[int, PendingRun] = {}
        self._replies: dict[int, asyncio.Future[protocol.Reply]] = {}
        # The pieces of the incomplete line received so far, joined once its newline arrives.
        self._partial: list[bytes] = []
        self._partial_size = 0
        # The agent's ready message; fails when its protocol version is not ours.
        self.ready: asyncio.Future[protocol.ReadyReply] = asyncio.get_running_loop().create_future()
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
            data = protocol.parse_line(line)
        except protocol.ProtocolError:
            self.log.warning("bad line from the sandbox agent", line=line[:200])
            return
        if data.get("type") == protocol.ReadyReply.TYPE:
            mismatch = protocol.version_mismatch(data)
            if mismatch:
                self.log.error("sandbox agent of another protocol version", protocol=data.get("protocol"))
                self.fail(SandboxError(mismatch))
                return
        try:
            message = protocol.decode_reply(data)
        except protocol.ProtocolError as exc:
            self._malformed(data, exc)
            return
        self._dispatch(message)

    def _malformed(self, data: dict[str, Any], exc: protocol.ProtocolError) -> None:
        """A reply that does not decode fails the request it names (nothing else trusts it)."""
        self.log.warning("malformed reply from the sandbox agent", error=str(exc))
        error = SandboxError(f"the sandbox agent sent a malformed reply: {exc}")
        request_id = data.get("id")
        run = self._runs.get(request_id) if isinstance(request_id, int) else None
        if run is not None and not run.done.done():
            run.done.set_exception(error)
        reply = self._replies.get(request_id) if isinstance(request_id, int) else None
        if reply is not None and not reply.done():
            reply.set_exception(error)

    def _dispatch(self, message: protocol.Reply) -> None:
        if isinstance(message, protocol.ReadyReply):
            if not self.ready.done():
                self.ready.set_result(message)
            return
        run = self._runs.get(message.id)
        if run is not None:
            if isinstance(message, protocol.OutputReply):
                data = run.take(message.stream, message.data)
                if not data:
                    return
                try:
                    run.on_output(message.stream, data)
                except Exception:
                    self.log.exception("output callback failed")
            elif isinstance(message, protocol.ExitReply) and not run.done.done():
                run.done.set_result(message)
            elif isinstance(message, protocol.ErrorReply) and not run.done.done():
                # The agent could not even take the run (a malformed request).
                run.done.set_result(protocol.ExitReply(id=message.id, error=message.error))
            return
        reply = self._replies.get(message.id)
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

    async def send(self, request: protocol.Request[Any]) -> None:
        """Sends one request as it is (its id set by the caller: see run() and request())."""
        if self.failure is not None:
            raise self.failure
        async with self._lock:
            await self._send_line(protocol.encode(request))

    async def start(self, request: protocol.RunRequest, on_output: OutputCallback) -> PendingRun:
        """Sends a run request (giving it its id); its output goes to `on_output` and its end
        to finish()."""
        request.id = next(self._ids)
        pending = PendingRun(on_output, request.max_output_bytes)
        self._runs[request.id] = pending
        try:
            await self.send(request)
        except BaseException:
            self._runs.pop(request.id, None)
            raise
        return pending

    async def finish(self, request: protocol.RunRequest, pending: PendingRun) -> protocol.ExitReply:
        """Waits for a started run's exit report; cancelling kills the step."""
        try:
            try:
                # asyncio.timeout, not wait_for: on 3.11, wait_for loses a cancellation that
                # arrives as the awaited future completes.
                async with asyncio.timeout(request.timeout + AGENT_GRACE_SECONDS):
                    return await asyncio.shield(pending.done)
            except TimeoutError:
                raise SandboxError("the sandbox agent stopped answering") from None
            except asyncio.CancelledError:
                # Stop the step now; the caller may keep using the sandbox.
                await self.kill(request.id)
                raise
        finally:
            self._runs.pop(request.id, None)

    async def kill(self, run_id: int) -> None:
        """Asks the agent to kill run `run_id`'s whole process tree (its exit report follows)."""
        try:
            await self.send(protocol.KillRequest(id=next(self._ids), target=run_id))
        except (SandboxError, ConnectionError):
            pass

    async def run(
        self, request: protocol.RunRequest, on_output: OutputCallback
    ) -> tuple[protocol.ExitReply, PendingRun]:
        """Sends a run request (giving it its id) and waits for its exit report; cancelling
        kills the step."""
        pending = await self.start(request, on_output)
        return await self.finish(request, pending), pending

    async def request(self, request: protocol.Request[R], timeout: float = AGENT_GRACE_SECONDS + 30) -> R:
        """A one-reply request (giving it its id); the agent's ErrorReply is FileRefused."""
        expected = request.REPLY
        assert expected is not None, f"{request.OP} has no reply"
        request.id = next(self._ids)
        future: asyncio.Future[protocol.Reply] = asyncio.get_running_loop().create_future()
        self._replies[request.id] = future
        try:
            await self.send(request)
            async with asyncio.timeout(timeout):
                reply = await future
        except TimeoutError:
            raise SandboxError("the sandbox agent stopped answering") from None
        finally:
            self._replies.pop(request.id, None)
        if isinstance(reply, protocol.ErrorReply):
            raise (FileMissing if reply.missing else FileRefused)(reply.error)
        if not isinstance(reply, expected):
            raise SandboxError(
                f"the sandbox agent answered {request.OP} with {reply.TYPE!r}, not {expected.TYPE!r}"
            )
        return reply  # type: ignore[return-value]  # REPLY is R's class (see agent_protocol)
