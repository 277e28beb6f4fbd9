"""corral.internal.v1.SandboxAccessService (served by the scheduler, for the gateway): whether
a presented token opens a sandbox's desktop or Jupyter, where its sockets are, and starting
Jupyter. Thin over SandboxCoordinator and SandboxSecretsStore (their errors reach the caller
through corral.grpc_server's interceptor); nothing here is public API.
"""

from __future__ import annotations

from corral.errors import PermissionDenied
from corral.grpc_server import Context
from corral.internal.v1 import sandbox_access_pb2, sandbox_access_pb2_grpc

from .sandbox_secrets import SandboxSecretsStore
from .sandboxes import SandboxCoordinator

SERVICE_NAME = sandbox_access_pb2.DESCRIPTOR.services_by_name["SandboxAccessService"].full_name


class SandboxAccessServicer(sandbox_access_pb2_grpc.SandboxAccessServiceServicer):
    def __init__(self, coordinator: SandboxCoordinator, secrets: SandboxSecretsStore) -> None:
        self._sandboxes = coordinator
        self._secrets = secrets

    async def AuthorizeSandboxAccess(
        self, request: sandbox_access_pb2.AuthorizeSandboxAccessRequest, context: Context
    ) -> sandbox_access_pb2.AuthorizeSandboxAccessResponse:
        sandbox = await self._sandboxes.get(request.sandbox_id)
        secrets = await self._secrets.get(sandbox.sandbox_id)
        access = secrets.access(request.token) if secrets is not None else sandbox_access_pb2.SANDBOX_ACCESS_NONE
        reply = sandbox_access_pb2.AuthorizeSandboxAccessResponse(sandbox=sandbox, access=access)
        if secrets is not None and access != sandbox_access_pb2.SANDBOX_ACCESS_NONE:
            reply.host_run_dir = secrets.host_run_dir
        return reply

    async def OpenJupyter(
        self, request: sandbox_access_pb2.OpenJupyterRequest, context: Context
    ) -> sandbox_access_pb2.OpenJupyterResponse:
        sandbox = await self._sandboxes.get(request.sandbox_id)
        secrets = await self._secrets.get(sandbox.sandbox_id)
        if secrets is None or secrets.access(request.token) != sandbox_access_pb2.SANDBOX_ACCESS_FULL:
            raise PermissionDenied("Jupyter needs the sandbox's full token")
        socket = await self._sandboxes.start_jupyter(request.sandbox_id, request.base_url)
        return sandbox_access_pb2.OpenJupyterResponse(host_socket=socket)
