"""SandboxService over gRPC (served by the scheduler): thin over SandboxCoordinator, whose
corral.errors exceptions the server's interceptor turns into status codes. Each call acts for
its caller's tenant (services/scheduler/principal.py): another tenant's sandbox is unknown."""

from __future__ import annotations

from corral.audit import AuditLog
from corral.config import Settings
from corral.errors import InvalidSandboxRequest, SandboxNotFound
from corral.grpc_server import Context
from corral.steps import check_network_rules
from corral.v1 import sandbox_pb2, sandbox_pb2_grpc

from .idempotency import Claim, IdempotencyKeys
from .principal import Authenticator, Principal
from .quotas import SubmissionRate
from .redaction import public_sandbox
from .sandbox_calls import Route, SandboxCallsServicer
from .sandboxes import CREATE_TIMEOUT_SECONDS, SandboxCoordinator


class SandboxServicer(SandboxCallsServicer, sandbox_pb2_grpc.SandboxServiceServicer):
    def __init__(
        self,
        coordinator: SandboxCoordinator,
        auth: Authenticator,
        audit: AuditLog,
        submissions: SubmissionRate,
        settings: Settings,
        keys: IdempotencyKeys,
    ) -> None:
        self._sandboxes = coordinator
        self._auth = auth
        self._audit = audit
        self._submissions = submissions
        self._quota = settings.quota_max_sandboxes
        self._keys = keys
        self._routes: dict[str, Route] = {}  # of the interactive calls (sandbox_calls.py)

    async def _owned(self, sandbox_id: str, who: Principal, method: str) -> None:
        """Another tenant's sandbox answers as an unknown one, and the refusal is audited."""
        sandbox = await self._sandboxes.get(sandbox_id)
        if not who.owns(sandbox.tenant_id):
            self._audit.refused(method, "sandbox of another tenant", who, sandbox_id=sandbox_id)
            raise SandboxNotFound(f"no sandbox with id {sandbox_id!r}")

    async def CreateSandbox(
        self, request: sandbox_pb2.CreateSandboxRequest, context: Context
    ) -> sandbox_pb2.CreateSandboxResponse:
        who = await self._auth.caller(context, "CreateSandbox")
        claim = None
        if request.idempotency_key:
            claim = Claim.of(who.tenant_id, request.idempotency_key, "CreateSandbox", request.spec)
            # A retry waits for a first request still creating (an executor call of its own).
            earlier = await self._keys.acquire(claim, CREATE_TIMEOUT_SECONDS, 2 * CREATE_TIMEOUT_SECONDS)
            if earlier is not None:
                # The tokens were shown once, to the first request: a replay answers without them.
                replayed = await self._sandboxes.get(earlier, who.tenant_id)
                return sandbox_pb2.CreateSandboxResponse(sandbox=public_sandbox(replayed), replayed=True)
        try:
            self._submissions.take(who)
            sandbox, token, view_token = await self._sandboxes.create(
                request.spec, who.tenant_id, quota=0 if who.admin else self._quota
            )
        except BaseException:
            if claim is not None:
                await self._keys.release(claim)
            raise
        if claim is not None:
            await self._keys.fulfil(claim, sandbox.sandbox_id)
        self._audit.record("sandbox_created", who, sandbox_id=sandbox.sandbox_id)
        return sandbox_pb2.CreateSandboxResponse(sandbox=public_sandbox(sandbox), token=token, view_token=view_token)

    async def GetSandbox(
        self, request: sandbox_pb2.GetSandboxRequest, context: Context
    ) -> sandbox_pb2.GetSandboxResponse:
        who = await self._auth.caller(context, "GetSandbox")
        await self._owned(request.sandbox_id, who, "GetSandbox")
        sandbox = await self._sandboxes.with_network_status(await self._sandboxes.get(request.sandbox_id, who.scope))
        return sandbox_pb2.GetSandboxResponse(sandbox=public_sandbox(sandbox))

    async def ListSandboxes(
        self, request: sandbox_pb2.ListSandboxesRequest, context: Context
    ) -> sandbox_pb2.ListSandboxesResponse:
        who = await self._auth.caller(context, "ListSandboxes")
        sandboxes = await self._sandboxes.list_sandboxes(request.include_ended, who.scope)
        return sandbox_pb2.ListSandboxesResponse(sandboxes=[public_sandbox(s) for s in sandboxes])

    async def ExtendSandbox(
        self, request: sandbox_pb2.ExtendSandboxRequest, context: Context
    ) -> sandbox_pb2.ExtendSandboxResponse:
        who = await self._auth.caller(context, "ExtendSandbox")
        await self._owned(request.sandbox_id, who, "ExtendSandbox")
        sandbox = await self._sandboxes.extend(request.sandbox_id, request.ttl.ToNanoseconds() / 1e9, who.scope)
        return sandbox_pb2.ExtendSandboxResponse(sandbox=public_sandbox(sandbox))

    async def DeleteSandbox(
        self, request: sandbox_pb2.DeleteSandboxRequest, context: Context
    ) -> sandbox_pb2.DeleteSandboxResponse:
        who = await self._auth.caller(context, "DeleteSandbox")
        await self._owned(request.sandbox_id, who, "DeleteSandbox")
        sandbox = await self._sandboxes.delete(request.sandbox_id, who.scope)
        self._audit.record("sandbox_deleted", who, sandbox_id=sandbox.sandbox_id)
        return sandbox_pb2.DeleteSandboxResponse(sandbox=public_sandbox(sandbox))

    async def UpdateSandboxNetwork(
        self, request: sandbox_pb2.UpdateSandboxNetworkRequest, context: Context
    ) -> sandbox_pb2.UpdateSandboxNetworkResponse:
        who = await self._auth.caller(context, "UpdateSandboxNetwork")
        # The rules first, as the gateway does: a bad one is named whatever the sandbox.
        check_network_rules(True, request.rules, InvalidSandboxRequest)
        await self._owned(request.sandbox_id, who, "UpdateSandboxNetwork")
        sandbox = await self._sandboxes.update_network(request.sandbox_id, request.rules, who.scope)
        self._audit.record(
            "sandbox_network_changed", who, sandbox_id=sandbox.sandbox_id,
            allow=list(request.rules.allow), deny=list(request.rules.deny),
        )
        return sandbox_pb2.UpdateSandboxNetworkResponse(sandbox=public_sandbox(sandbox))
