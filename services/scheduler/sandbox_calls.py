"""A long-lived sandbox's interactive calls, the scheduler's side: the caller must own the
sandbox (another tenant's answers as unknown, audited), then the call is relayed to the
executor holding it, without a task record or the dispatch queue.

Kept lean, as the calls are many and small: the sandbox's owner and executor are remembered
after the first call (neither changes while it is active); the executor is the truth for
whether the sandbox is still there, and when it says no the record is read again, so an
ended sandbox is reported as such. Mixed into SandboxServicer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from corral.audit import AuditLog
from corral.bounds import MAX_COMMAND_TIMEOUT_SECONDS
from corral.errors import InvalidArgument, SandboxNotFound, SandboxUnavailable
from corral.grpc_errors import from_rpc_error
from corral.grpc_server import Context
from corral.internal.v1 import executor_pb2 as pb
from corral.internal.v1 import executor_pb2_grpc
from corral.v1 import sandbox_calls_pb2 as calls_pb2
from corral.v1 import sandbox_pb2

from .principal import Authenticator
from .sandboxes import SandboxCoordinator

# Longest a foreground command's relay waits beyond the command's own timeout.
COMMAND_GRACE_SECONDS = 30.0
DEFAULT_COMMAND_TIMEOUT_SECONDS = 60.0
# A desktop action may wait up to a minute for a window (wait_window).
DESKTOP_TIMEOUT_SECONDS = 90.0
# Most sandboxes whose routes are remembered (an active sandbox's never change).
MAX_ROUTES = 10_000


def command_deadline(command: calls_pb2.SandboxCommand) -> float:
    """How long a foreground command's relay waits: its timeout (the executor refuses one
    out of range; a huge one must not overflow the deadline) and the grace."""
    asked = command.timeout_seconds if 0 < command.timeout_seconds <= MAX_COMMAND_TIMEOUT_SECONDS else 0.0
    return (asked or DEFAULT_COMMAND_TIMEOUT_SECONDS) + COMMAND_GRACE_SECONDS


@dataclass(frozen=True)
class Route:
    tenant_id: str
    executor_id: str


class SandboxCallsServicer:
    _sandboxes: SandboxCoordinator
    _auth: Authenticator
    _audit: AuditLog
    _routes: dict[str, Route]

    async def _executor(self, sandbox_id: str, context: Context, method: str) -> executor_pb2_grpc.ExecutorServiceAsyncStub:
        """The stub of the executor holding the caller's sandbox `sandbox_id`."""
        who = await self._auth.caller(context, method)
        if not sandbox_id:
            raise InvalidArgument("sandbox_id is required")
        routes = self._routes
        route = routes.get(sandbox_id)
        if route is None:
            sandbox = await self._sandboxes.get(sandbox_id)
            if who.owns(sandbox.tenant_id):
                sandbox = await self._sandboxes.active(sandbox_id)  # SandboxEnded
            route = Route(sandbox.tenant_id, sandbox.executor_id)
            if sandbox.state == sandbox_pb2.SANDBOX_STATE_ACTIVE:
                if len(routes) >= MAX_ROUTES:
                    routes.clear()
                routes[sandbox_id] = route
        if not who.owns(route.tenant_id):
            self._audit.refused(method, "sandbox of another tenant", who, sandbox_id=sandbox_id)
            raise SandboxNotFound(f"no sandbox with id {sandbox_id!r}")
        executor = self._sandboxes.executors.get(route.executor_id)
        if executor is None or not executor.alive:
            if routes.pop(sandbox_id, None) is not None:
                await self._sandboxes.active(sandbox_id)  # SandboxEnded: failed with its executor
            raise SandboxUnavailable(f"the sandbox's executor {route.executor_id} is not connected")
        return executor.stub

    async def _failed(self, sandbox_id: str, exc: grpc.aio.AioRpcError) -> Exception:
        """The caller's error for the executor's; a sandbox it no longer has is read again
        (and forgotten), so that an ended one says how it ended."""
        error = from_rpc_error(exc)
        # Only the sandbox itself missing, not a file in it (NotFound too).
        if isinstance(error, SandboxNotFound) and self._routes.pop(sandbox_id, None) is not None:
            try:
                await self._sandboxes.active(sandbox_id)
            except Exception as ended:
                return ended
        return error

    async def _unary(
        self, sandbox_id: str, context: Context, method: str, rpc: str, request: Any, timeout: float = 0.0
    ) -> Any:
        stub = await self._executor(sandbox_id, context, method)
        timeout = timeout or self._sandboxes.settings.gateway_rpc_timeout_seconds
        try:
            return (await getattr(stub, rpc)(request, timeout=timeout)).reply
        except grpc.aio.AioRpcError as exc:
            raise await self._failed(sandbox_id, exc) from None

    async def _stream(self, sandbox_id: str, call: Any) -> AsyncIterator[Any]:
        try:
            async for response in call:
                yield response.reply
        except grpc.aio.AioRpcError as exc:
            raise await self._failed(sandbox_id, exc) from None
        finally:
            call.cancel()  # the caller went away: so does the executor's call (killing the command)

    # --- commands ------------------------------------------------------------------------------

    async def RunSandboxCommand(
        self, request: calls_pb2.RunSandboxCommandRequest, context: Context
    ) -> calls_pb2.RunSandboxCommandResponse:
        command = request.command
        # A background command's start is quick; a foreground one may take its whole timeout.
        timeout = 0.0 if command.background else command_deadline(command)
        reply: calls_pb2.RunSandboxCommandResponse = await self._unary(
            request.sandbox_id, context, "RunSandboxCommand", "RunCommand", pb.RunCommandRequest(call=request), timeout
        )
        return reply

    async def StreamSandboxCommand(
        self, request: calls_pb2.StreamSandboxCommandRequest, context: Context
    ) -> AsyncIterator[calls_pb2.StreamSandboxCommandResponse]:
        stub = await self._executor(request.sandbox_id, context, "StreamSandboxCommand")
        command = request.command
        timeout = command_deadline(command)
        call = stub.StreamCommand(pb.StreamCommandRequest(call=request), timeout=timeout)
        async for reply in self._stream(request.sandbox_id, call):
            yield reply

    async def GetSandboxCommand(
        self, request: calls_pb2.GetSandboxCommandRequest, context: Context
    ) -> calls_pb2.GetSandboxCommandResponse:
        reply: calls_pb2.GetSandboxCommandResponse = await self._unary(
            request.sandbox_id, context, "GetSandboxCommand", "GetCommand", pb.GetCommandRequest(call=request)
        )
        return reply

    async def WatchSandboxCommand(
        self, request: calls_pb2.WatchSandboxCommandRequest, context: Context
    ) -> AsyncIterator[calls_pb2.WatchSandboxCommandResponse]:
        stub = await self._executor(request.sandbox_id, context, "WatchSandboxCommand")
        call = stub.WatchCommand(pb.WatchCommandRequest(call=request))
        async for reply in self._stream(request.sandbox_id, call):
            yield reply

    async def WriteSandboxCommandStdin(
        self, request: calls_pb2.WriteSandboxCommandStdinRequest, context: Context
    ) -> calls_pb2.WriteSandboxCommandStdinResponse:
        reply: calls_pb2.WriteSandboxCommandStdinResponse = await self._unary(
            request.sandbox_id, context, "WriteSandboxCommandStdin", "WriteCommandStdin",
            pb.WriteCommandStdinRequest(call=request),
        )
        return reply

    async def SignalSandboxCommand(
        self, request: calls_pb2.SignalSandboxCommandRequest, context: Context
    ) -> calls_pb2.SignalSandboxCommandResponse:
        reply: calls_pb2.SignalSandboxCommandResponse = await self._unary(
            request.sandbox_id, context, "SignalSandboxCommand", "SignalCommand", pb.SignalCommandRequest(call=request)
        )
        return reply

    # --- files ---------------------------------------------------------------------------------

    async def ReadSandboxFile(
        self, request: calls_pb2.ReadSandboxFileRequest, context: Context
    ) -> AsyncIterator[calls_pb2.ReadSandboxFileResponse]:
        stub = await self._executor(request.sandbox_id, context, "ReadSandboxFile")
        call = stub.ReadFile(pb.ReadFileRequest(call=request))
        async for reply in self._stream(request.sandbox_id, call):
            yield reply

    async def WriteSandboxFile(
        self, requests: AsyncIterator[calls_pb2.WriteSandboxFileRequest], context: Context
    ) -> calls_pb2.WriteSandboxFileResponse:
        parts = aiter(requests)
        first = await anext(parts, None)
        if first is None or first.WhichOneof("part") != "target":
            raise InvalidArgument("a file write starts with its target (sandbox_id and path)")
        sandbox_id = first.target.sandbox_id
        stub = await self._executor(sandbox_id, context, "WriteSandboxFile")

        async def relayed() -> AsyncIterator[pb.WriteFileRequest]:
            yield pb.WriteFileRequest(call=first)
            async for part in parts:
                yield pb.WriteFileRequest(call=part)

        try:
            response = await stub.WriteFile(relayed())
        except grpc.aio.AioRpcError as exc:
            raise await self._failed(sandbox_id, exc) from None
        reply: calls_pb2.WriteSandboxFileResponse = response.reply
        return reply

    async def OperateSandboxFile(
        self, request: calls_pb2.OperateSandboxFileRequest, context: Context
    ) -> calls_pb2.OperateSandboxFileResponse:
        reply: calls_pb2.OperateSandboxFileResponse = await self._unary(
            request.sandbox_id, context, "OperateSandboxFile", "OperateFile", pb.OperateFileRequest(call=request)
        )
        return reply

    # --- desktop -------------------------------------------------------------------------------

    async def RunSandboxDesktopAction(
        self, request: calls_pb2.RunSandboxDesktopActionRequest, context: Context
    ) -> calls_pb2.RunSandboxDesktopActionResponse:
        reply: calls_pb2.RunSandboxDesktopActionResponse = await self._unary(
            request.sandbox_id, context, "RunSandboxDesktopAction", "RunDesktopAction",
            pb.RunDesktopActionRequest(call=request), timeout=DESKTOP_TIMEOUT_SECONDS,
        )
        return reply
