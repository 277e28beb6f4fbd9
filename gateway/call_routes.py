"""A long-lived sandbox's quick calls, straight to the executor holding it.

The relayed path is gateway -> scheduler (checks the caller's key owns the active sandbox,
then relays) -> executor. For the calls that are many and small (run a command, stat a file, a
desktop action, a background command's status, stdin, signal) the gateway asks the scheduler
once where the caller's sandbox is (SandboxAccessService.RouteSandboxCalls: the same checks,
answering the executor's address) and, for `ttl` seconds, sends that caller's calls to that
executor itself. The executor takes them from the gateway's mTLS role as it takes the desktop
relay's (corral/authz.py): the gateway is the edge that holds the callers' keys, so a grant
signed for each call would add a key to distribute and nothing a compromised gateway could
not already do.

What stops a route, so that what the scheduler would refuse stops promptly:
- it is per sandbox and per key (a SHA-256 of it, never the key): another tenant's key, an
  unknown or a revoked one is asked about on its own, and refused by the scheduler;
- it lasts `ttl` (CORRAL_GATEWAY_CALL_ROUTE_SECONDS) at most: a key revoked, or a sandbox
  deleted, elsewhere stops within that (plus the scheduler's own key cache);
- a sandbox deleted or a key revoked through this gateway forgets its routes at once;
- the executor answering that it has no such sandbox (ended, or moved) or being unreachable
  drops the route, and the call goes the relayed way, which says how the sandbox ended; a call
  the executor may have received before its connection broke is not sent again (it fails
  UNAVAILABLE), unless it changes nothing.
Every call is recorded in the sandbox's history and agent.log by the executor, either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import grpc

from corral.api_keys import hash_key
from corral.errors import SandboxNotFound
from corral.grpc_errors import from_rpc_error
from corral.internal.v1 import executor_pb2, executor_pb2_grpc, sandbox_access_pb2, sandbox_access_pb2_grpc
from corral.v1 import sandbox_pb2_grpc
from gateway.auth import Metadata
from gateway.backends import upstream
from gateway.errors import from_rpc_error as api_error
from gateway.sandbox_relay import SandboxRelay

# The scheduler's RPC -> the executor's, and the message that wraps the call for it.
EXECUTOR_RPCS: dict[str, tuple[str, Any]] = {
    "RunSandboxCommand": ("RunCommand", executor_pb2.RunCommandRequest),
    "GetSandboxCommand": ("GetCommand", executor_pb2.GetCommandRequest),
    "WriteSandboxCommandStdin": ("WriteCommandStdin", executor_pb2.WriteCommandStdinRequest),
    "SignalSandboxCommand": ("SignalCommand", executor_pb2.SignalCommandRequest),
    "OperateSandboxFile": ("OperateFile", executor_pb2.OperateFileRequest),
    "RunSandboxDesktopAction": ("RunDesktopAction", executor_pb2.RunDesktopActionRequest),
}
# Most routes remembered (they are per active sandbox and key; forged keys are never routed).
MAX_ROUTES = 10_000


@dataclass(frozen=True)
class _Route:
    stub: executor_pb2_grpc.ExecutorServiceAsyncStub
    expires: float


# Calls that change nothing, so may be sent again the relayed way whatever became of the first.
REPEATABLE_RPCS = frozenset({"GetSandboxCommand"})


def _route_gone(rpc: str, exc: grpc.aio.AioRpcError) -> bool:
    """The executor no longer holds the sandbox (not a file missing in it), or was unreachable
    before the call left: a call that may have reached it (the connection broke under it) is
    not sent again, unless it changes nothing (a command would run twice)."""
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        never_sent = "failed to connect" in (exc.details() or "").lower()
        return never_sent or rpc in REPEATABLE_RPCS
    return exc.code() == grpc.StatusCode.NOT_FOUND and isinstance(from_rpc_error(exc), SandboxNotFound)


class CallRoutes:
    def __init__(
        self,
        sandboxes: sandbox_pb2_grpc.SandboxServiceAsyncStub,
        access: sandbox_access_pb2_grpc.SandboxAccessServiceAsyncStub,
        relay: SandboxRelay,
        ttl: float,
        timeout: float,
    ) -> None:
        self._sandboxes = sandboxes
        self._access = access
        self._relay = relay
        self._ttl = ttl
        self._timeout = timeout
        self._routes: dict[tuple[str, str], _Route] = {}
        self._stubs: dict[str, executor_pb2_grpc.ExecutorServiceAsyncStub] = {}

    def _key(self, sandbox_id: str, caller: Metadata) -> tuple[str, str]:
        return sandbox_id, hash_key(caller[0][1]) if caller else ""

    async def _route(self, sandbox_id: str, caller: Metadata) -> _Route:
        """The executor of the caller's sandbox, as the scheduler last said (its refusals raise)."""
        key = self._key(sandbox_id, caller)
        now = time.monotonic()
        route = self._routes.get(key)
        if route is not None and now < route.expires:
            return route
        async with upstream("scheduler"):
            reply = await self._access.RouteSandboxCalls(
                sandbox_access_pb2.RouteSandboxCallsRequest(sandbox_id=sandbox_id), metadata=caller, timeout=self._timeout
            )
        address = reply.executor_address
        stub = self._stubs.get(address)
        if stub is None:
            stub = self._stubs[address] = executor_pb2_grpc.ExecutorServiceStub(self._relay.channel(address))
        if len(self._routes) >= MAX_ROUTES:
            self._routes.clear()
        route = self._routes[key] = _Route(stub, now + self._ttl)
        return route

    def forget(self, sandbox_id: str | None = None) -> None:
        """Drops the routes of `sandbox_id` (every route when None: a key was revoked)."""
        if sandbox_id is None:
            self._routes.clear()
        else:
            self._routes = {key: route for key, route in self._routes.items() if key[0] != sandbox_id}

    async def unary(self, rpc: str, sandbox_id: str, request: Any, caller: Metadata, timeout: float) -> Any:
        """The reply of the scheduler's call `rpc` (an EXECUTOR_RPCS key), from the executor
        when routed; the relayed way when not, or when the route has gone."""
        if self._ttl > 0:
            route = await self._route(sandbox_id, caller)
            executor_rpc, wrapper = EXECUTOR_RPCS[rpc]
            try:
                return (await getattr(route.stub, executor_rpc)(wrapper(call=request), timeout=timeout)).reply
            except grpc.aio.AioRpcError as exc:
                gone = _route_gone(rpc, exc)
                if gone or exc.code() == grpc.StatusCode.UNAVAILABLE:
                    self.forget(sandbox_id)  # (unreachable: the next call asks the scheduler again)
                if not gone:
                    raise api_error(exc, "executor") from None
        async with upstream("scheduler"):
            return await getattr(self._sandboxes, rpc)(request, metadata=caller, timeout=timeout)
