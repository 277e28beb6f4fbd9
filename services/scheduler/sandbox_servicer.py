"""SandboxService over gRPC (served by the scheduler): thin over SandboxCoordinator, whose
corral.errors exceptions the server's interceptor turns into status codes."""

from __future__ import annotations

from corral.grpc_server import Context
from corral.v1 import sandbox_pb2, sandbox_pb2_grpc

from .redaction import public_sandbox
from .sandboxes import SandboxCoordinator


class SandboxServicer(sandbox_pb2_grpc.SandboxServiceServicer):
    def __init__(self, coordinator: SandboxCoordinator) -> None:
        self._sandboxes = coordinator

    async def CreateSandbox(
        self, request: sandbox_pb2.CreateSandboxRequest, context: Context
    ) -> sandbox_pb2.CreateSandboxResponse:
        sandbox, token, view_token = await self._sandboxes.create(request.spec)
        return sandbox_pb2.CreateSandboxResponse(sandbox=public_sandbox(sandbox), token=token, view_token=view_token)

    async def GetSandbox(
        self, request: sandbox_pb2.GetSandboxRequest, context: Context
    ) -> sandbox_pb2.GetSandboxResponse:
        sandbox = await self._sandboxes.get(request.sandbox_id)
        return sandbox_pb2.GetSandboxResponse(sandbox=public_sandbox(sandbox))

    async def ListSandboxes(
        self, request: sandbox_pb2.ListSandboxesRequest, context: Context
    ) -> sandbox_pb2.ListSandboxesResponse:
        sandboxes = await self._sandboxes.list_sandboxes(request.include_ended)
        return sandbox_pb2.ListSandboxesResponse(sandboxes=[public_sandbox(s) for s in sandboxes])

    async def ExtendSandbox(
        self, request: sandbox_pb2.ExtendSandboxRequest, context: Context
    ) -> sandbox_pb2.ExtendSandboxResponse:
        sandbox = await self._sandboxes.extend(request.sandbox_id, request.ttl.ToNanoseconds() / 1e9)
        return sandbox_pb2.ExtendSandboxResponse(sandbox=public_sandbox(sandbox))

    async def DeleteSandbox(
        self, request: sandbox_pb2.DeleteSandboxRequest, context: Context
    ) -> sandbox_pb2.DeleteSandboxResponse:
        sandbox = await self._sandboxes.delete(request.sandbox_id)
        return sandbox_pb2.DeleteSandboxResponse(sandbox=public_sandbox(sandbox))
