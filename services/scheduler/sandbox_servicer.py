"""SandboxService over gRPC (served by the scheduler): thin over SandboxCoordinator."""

from __future__ import annotations

from typing import NoReturn

import grpc

from corral.grpc_server import Context
from corral.v1 import sandbox_pb2, sandbox_pb2_grpc

from .sandboxes import (
    InvalidSandboxRequest,
    SandboxCoordinator,
    SandboxEnded,
    SandboxNotFound,
    SandboxUnavailable,
)

CODES: dict[type[Exception], grpc.StatusCode] = {
    InvalidSandboxRequest: grpc.StatusCode.INVALID_ARGUMENT,
    SandboxNotFound: grpc.StatusCode.NOT_FOUND,
    SandboxEnded: grpc.StatusCode.FAILED_PRECONDITION,
    SandboxUnavailable: grpc.StatusCode.UNAVAILABLE,
}
ERRORS = tuple(CODES)


async def _abort(exc: Exception, context: Context) -> NoReturn:
    await context.abort(CODES[type(exc)], str(exc))
    raise exc


class SandboxServicer(sandbox_pb2_grpc.SandboxServiceServicer):
    def __init__(self, coordinator: SandboxCoordinator) -> None:
        self._sandboxes = coordinator

    async def CreateSandbox(
        self, request: sandbox_pb2.CreateSandboxRequest, context: Context
    ) -> sandbox_pb2.CreateSandboxResponse:
        try:
            sandbox, token, view_token = await self._sandboxes.create(request.spec)
        except ERRORS as exc:
            await _abort(exc, context)
        return sandbox_pb2.CreateSandboxResponse(sandbox=sandbox, token=token, view_token=view_token)

    async def GetSandbox(
        self, request: sandbox_pb2.GetSandboxRequest, context: Context
    ) -> sandbox_pb2.GetSandboxResponse:
        try:
            sandbox = await self._sandboxes.get(request.sandbox_id)
        except ERRORS as exc:
            await _abort(exc, context)
        return sandbox_pb2.GetSandboxResponse(sandbox=sandbox)

    async def ListSandboxes(
        self, request: sandbox_pb2.ListSandboxesRequest, context: Context
    ) -> sandbox_pb2.ListSandboxesResponse:
        return sandbox_pb2.ListSandboxesResponse(sandboxes=await self._sandboxes.list_sandboxes(request.include_ended))

    async def ExtendSandbox(
        self, request: sandbox_pb2.ExtendSandboxRequest, context: Context
    ) -> sandbox_pb2.ExtendSandboxResponse:
        try:
            sandbox = await self._sandboxes.extend(request.sandbox_id, request.ttl.ToNanoseconds() / 1e9)
        except ERRORS as exc:
            await _abort(exc, context)
        return sandbox_pb2.ExtendSandboxResponse(sandbox=sandbox)

    async def DeleteSandbox(
        self, request: sandbox_pb2.DeleteSandboxRequest, context: Context
    ) -> sandbox_pb2.DeleteSandboxResponse:
        try:
            sandbox = await self._sandboxes.delete(request.sandbox_id)
        except ERRORS as exc:
            await _abort(exc, context)
        return sandbox_pb2.DeleteSandboxResponse(sandbox=sandbox)
