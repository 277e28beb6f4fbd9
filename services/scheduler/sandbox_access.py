"""corral.internal.v1.SandboxAccessService (served by the scheduler, for the gateway): whether
a presented token opens a sandbox's desktop or Jupyter, which executor holds it (the gateway
relays the bytes through that executor's SandboxRelayService), and starting Jupyter. Thin over SandboxCoordinator and SandboxSecretsStore (their errors reach the caller
through corral.grpc_server's interceptor); nothing here is public API.
"""

from __future__ import annotations

from corral.errors import PermissionDenied, SandboxNotFound, SandboxUnavailable
from corral.grpc_server import Context
from corral.internal.v1 import sandbox_access_pb2, sandbox_access_pb2_grpc
from corral.v1 import sandbox_pb2

from .principal import Authenticator
from .sandbox_secrets import SandboxSecrets, SandboxSecretsStore
from .sandboxes import SandboxCoordinator

SERVICE_NAME = sandbox_access_pb2.DESCRIPTOR.services_by_name["SandboxAccessService"].full_name


class SandboxAccessServicer(sandbox_access_pb2_grpc.SandboxAccessServiceServicer):
    def __init__(self, coordinator: SandboxCoordinator, secrets: SandboxSecretsStore, auth: Authenticator) -> None:
        self._sandboxes = coordinator
        self._secrets = secrets
        self._auth = auth

    async def _access(
        self, sandbox_id: str, token: str, context: Context
    ) -> tuple[sandbox_pb2.Sandbox, sandbox_access_pb2.SandboxAccess.ValueType, SandboxSecrets | None]:
        """What the sandbox's token, or the API key forwarded with the call, opens: an owner's
        (or an admin's) key opens everything; another tenant's key finds no such sandbox."""
        sandbox = await self._sandboxes.get(sandbox_id)
        secrets = await self._secrets.get(sandbox.sandbox_id)
        access = secrets.access(token) if secrets is not None else sandbox_access_pb2.SANDBOX_ACCESS_NONE
        if access == sandbox_access_pb2.SANDBOX_ACCESS_NONE:
            who = await self._auth.key_holder(context)
            if who is not None and who.owns(sandbox.tenant_id):
                access = sandbox_access_pb2.SANDBOX_ACCESS_FULL
            elif who is not None:
                self._auth.audit.refused("SandboxAccess", "sandbox of another tenant", who, sandbox_id=sandbox_id)
                raise SandboxNotFound(f"no sandbox with id {sandbox_id!r}")
        return sandbox, access, secrets

    async def AuthorizeSandboxAccess(
        self, request: sandbox_access_pb2.AuthorizeSandboxAccessRequest, context: Context
    ) -> sandbox_access_pb2.AuthorizeSandboxAccessResponse:
        sandbox, access, _ = await self._access(request.sandbox_id, request.token, context)
        reply = sandbox_access_pb2.AuthorizeSandboxAccessResponse(sandbox=sandbox, access=access)
        if access != sandbox_access_pb2.SANDBOX_ACCESS_NONE:
            executor = self._sandboxes.executors.get(sandbox.executor_id)
            if executor is not None and executor.alive:
                reply.executor_address = executor.address
        return reply

    async def OpenJupyter(
        self, request: sandbox_access_pb2.OpenJupyterRequest, context: Context
    ) -> sandbox_access_pb2.OpenJupyterResponse:
        _, access, _ = await self._access(request.sandbox_id, request.token, context)
        if access != sandbox_access_pb2.SANDBOX_ACCESS_FULL:
            raise PermissionDenied("Jupyter needs the sandbox's full token")
        await self._sandboxes.start_jupyter(request.sandbox_id, request.base_url)
        return sandbox_access_pb2.OpenJupyterResponse()

    async def RouteSandboxCalls(
        self, request: sandbox_access_pb2.RouteSandboxCallsRequest, context: Context
    ) -> sandbox_access_pb2.RouteSandboxCallsResponse:
        # The checks of SandboxCallsServicer._executor (the relayed path), answering the
        # executor's address instead of relaying: the gateway then calls it directly.
        who = await self._auth.caller(context, "RouteSandboxCalls")
        sandbox = await self._sandboxes.get(request.sandbox_id)
        if not who.owns(sandbox.tenant_id):
            self._auth.audit.refused("RouteSandboxCalls", "sandbox of another tenant", who, sandbox_id=request.sandbox_id)
            raise SandboxNotFound(f"no sandbox with id {request.sandbox_id!r}")
        sandbox = await self._sandboxes.active(request.sandbox_id)  # SandboxEnded
        executor = self._sandboxes.executors.get(sandbox.executor_id)
        if executor is None or not executor.alive or not executor.address:
            raise SandboxUnavailable(f"the sandbox's executor {sandbox.executor_id} is not connected")
        return sandbox_access_pb2.RouteSandboxCallsResponse(executor_address=executor.address)
