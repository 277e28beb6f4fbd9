"""corral.internal.v1.SandboxAccessService (served by the scheduler, for the gateway): whether
a presented token opens a sandbox's desktop or Jupyter, where its sockets are, and starting
Jupyter. Thin over SandboxCoordinator and SandboxSecretsStore; nothing here is public API.
"""

from __future__ import annotations

import grpc

from corral.grpc_server import Context
from corral.internal.v1 import sandbox_access_pb2, sandbox_access_pb2_grpc

from .sandbox_secrets import SandboxSecretsStore
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
SERVICE_NAME = sandbox_access_pb2.DESCRIPTOR.services_by_name["SandboxAccessService"].full_name


def _code(exc: Exception) -> grpc.StatusCode:
    return next(code for kind, code in CODES.items() if isinstance(exc, kind))


class SandboxAccessServicer(sandbox_access_pb2_grpc.SandboxAccessServiceServicer):
    def __init__(self, coordinator: SandboxCoordinator, secrets: SandboxSecretsStore) -> None:
        self._sandboxes = coordinator
        self._secrets = secrets

    async def AuthorizeSandboxAccess(
        self, request: sandbox_access_pb2.AuthorizeSandboxAccessRequest, context: Context
    ) -> sandbox_access_pb2.AuthorizeSandboxAccessResponse:
        try:
            sandbox = await self._sandboxes.get(request.sandbox_id)
        except ERRORS as exc:
            await context.abort(_code(exc), str(exc))
        secrets = await self._secrets.get(sandbox.sandbox_id)
        access = secrets.access(request.token) if secrets is not None else sandbox_access_pb2.SANDBOX_ACCESS_NONE
        reply = sandbox_access_pb2.AuthorizeSandboxAccessResponse(sandbox=sandbox, access=access)
        if secrets is not None and access != sandbox_access_pb2.SANDBOX_ACCESS_NONE:
            reply.host_run_dir = secrets.host_run_dir
        return reply

    async def StartJupyter(
        self, request: sandbox_access_pb2.StartJupyterRequest, context: Context
    ) -> sandbox_access_pb2.StartJupyterResponse:
        try:
            sandbox = await self._sandboxes.get(request.sandbox_id)
        except ERRORS as exc:
            await context.abort(_code(exc), str(exc))
        secrets = await self._secrets.get(sandbox.sandbox_id)
        if secrets is None or secrets.access(request.token) != sandbox_access_pb2.SANDBOX_ACCESS_FULL:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "Jupyter needs the sandbox's full token")
        try:
            socket = await self._sandboxes.start_jupyter(request.sandbox_id, request.base_url)
        except ERRORS as exc:
            await context.abort(_code(exc), str(exc))
        return sandbox_access_pb2.StartJupyterResponse(host_socket=socket)
