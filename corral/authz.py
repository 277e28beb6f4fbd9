"""Who may call which RPC: the callers' identities and the one policy table.

Every Corral server (but the gui's, on a unix socket inside the sandbox) runs
`AuthorizationInterceptor`. It takes the caller's identity from the call -- today the verified
client certificate of the TLS connection, whose URI SAN `spiffe://corral/<role>/<name>` names
a role and a name (see corral.pki) -- and checks it against `POLICY`:

- no identity (a certificate from the CA that names no Corral role): UNAUTHENTICATED. A
  caller with no certificate, or one from another CA, does not get this far: the TLS
  handshake refuses it (corral.grpc_server.server_credentials says why);
- an identity whose role the RPC is not for: PERMISSION_DENIED, naming the roles it is for;
- an RPC bound to the caller's name (an executor registers and heartbeats only as itself):
  PERMISSION_DENIED when the request names another.

Health and reflection answer any caller that passed the handshake. The public corral.v1
services are also open to callers with no certificate (`key_callers`): they come through the
scheduler's public listener (CORRAL_SCHEDULER_PUBLIC_ADDRESS, TLS without a client
certificate), and the scheduler's servicers require their API key (principal.py); every
internal RPC answers them UNAUTHENTICATED.

This module needs grpc only (no cryptography): the TLS library has verified the certificate
chain, and grpc exposes the certificate's SPIFFE id as the `peer_spiffe_id` property.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

ROLES = ("scheduler", "executor", "memory", "gateway", "admin")
SPIFFE_PREFIX = "spiffe://corral/"


def spiffe_id(role: str, name: str) -> str:
    return f"{SPIFFE_PREFIX}{role}/{name}"


def parse_spiffe_id(uri: str) -> tuple[str, str] | None:
    """(role, name) of a Corral SPIFFE id, None for anything else."""
    if not uri.startswith(SPIFFE_PREFIX):
        return None
    role, sep, name = uri.removeprefix(SPIFFE_PREFIX).partition("/")
    if not sep or role not in ROLES or not name or "/" in name:
        return None
    return role, name


@dataclass(frozen=True)
class Identity:
    """A verified caller: its role, its name (an executor's name is its executor id), and how
    it was established ("certificate"; later "api_key", with a tenant)."""

    role: str
    name: str
    via: str = "certificate"

    def __str__(self) -> str:
        return f"{self.role} {self.name!r}"


# The caller of the RPC being handled, for servicers that need more than the role check.
current_identity: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "corral_identity", default=None
)

Context = Any  # grpc.aio.ServicerContext; kept loose, this module is shared by every server


def certificate_identity(context: Context) -> Identity | None:
    """The identity in the verified client certificate, if the caller sent one."""
    auth = context.auth_context()
    for value in auth.get("peer_spiffe_id", ()):
        parsed = parse_spiffe_id(value.decode("utf-8", "replace"))
        if parsed is not None:
            return Identity(*parsed)
    return None


# Tried in order; the first that recognises the caller wins.
AUTHENTICATORS: list[Callable[[Context], Identity | None]] = [certificate_identity]


def authenticate(context: Context) -> Identity | None:
    for authenticator in AUTHENTICATORS:
        identity = authenticator(context)
        if identity is not None:
            return identity
    return None


@dataclass(frozen=True)
class Rule:
    roles: frozenset[str]
    # A request field that must equal the caller's name (its executor id for an executor).
    bound_to_name: str | None = None
    # Also callable with no certificate (the scheduler's public listener, server-only TLS):
    # the servicer then requires the caller's API key (services/scheduler/principal.py).
    key_callers: bool = False


def rule(*roles: str, bound_to_name: str | None = None, key_callers: bool = False) -> Rule:
    assert all(r in ROLES for r in roles), roles
    return Rule(frozenset(roles), bound_to_name, key_callers)


OPEN = "open"  # answers anyone, no identity needed

_EXECUTOR_RPC = rule("scheduler")
_SANDBOX_CALL_RPC = rule("scheduler", "gateway")
# The executor's RPCs the gateway calls itself (gateway/call_routes.py); the streamed calls
# stay relayed by the scheduler.
GATEWAY_EXECUTOR_RPCS = (
    "RunCommand", "GetCommand", "WriteCommandStdin", "SignalCommand", "OperateFile", "RunDesktopAction",
)
# Public corral.v1 RPCs: the gateway on a client's behalf, or an admin's tools; on top, the
# scheduler resolves the client's API key (`authorization` metadata) to its tenant
# (services/scheduler/principal.py).
_PUBLIC_API = rule("gateway", "admin", key_callers=True)
_MEMORY_WRITE = rule("executor")
_MEMORY_READ = rule("gateway", "scheduler", "admin")

# Full service names (every method of it) or full method names ("/pkg.Service/Method"); a
# method's own entry wins over its service's. A method in neither is refused (fail closed).
POLICY: dict[str, Rule | str] = {
    "grpc.health.v1.Health": OPEN,
    "grpc.reflection.v1alpha.ServerReflection": OPEN,
    "grpc.reflection.v1.ServerReflection": OPEN,
    # The executor runs tasks and holds sandboxes for the scheduler only.
    "corral.internal.v1.ExecutorService": _EXECUTOR_RPC,
    # ... but for a long-lived sandbox's interactive calls, which the gateway also sends
    # straight to the executor once the scheduler has routed the caller's key to the sandbox
    # (RouteSandboxCalls; gateway/call_routes.py): trusted as for the relay below.
    **{f"/corral.internal.v1.ExecutorService/{method}": _SANDBOX_CALL_RPC for method in GATEWAY_EXECUTOR_RPCS},
    # A sandbox's desktop and Jupyter bytes, for the gateway only (which checked the token).
    "corral.internal.v1.SandboxRelayService": rule("gateway"),
    # An executor registers and heartbeats as itself only (hijacking, spoofed heartbeats).
    "/corral.internal.v1.ExecutorRegistryService/RegisterExecutor": rule("executor", bound_to_name="executor_id"),
    "/corral.internal.v1.ExecutorRegistryService/Heartbeat": rule("executor", bound_to_name="executor_id"),
    "/corral.internal.v1.ExecutorRegistryService/ListExecutors": rule("admin", "gateway"),
    # The gateway checks sandbox tokens and opens Jupyter through it.
    "corral.internal.v1.SandboxAccessService": rule("gateway"),
    "corral.v1.SchedulerService": _PUBLIC_API,
    "corral.v1.SandboxService": _PUBLIC_API,
    # API keys: the scheduler checks the tenant's key on each call (admin keys manage them).
    "corral.v1.KeyService": _PUBLIC_API,
    # History is written by the executors that ran the steps; read on a client's behalf.
    "/corral.v1.MemoryService/AppendEvents": _MEMORY_WRITE,
    "/corral.v1.MemoryService/PutNote": _MEMORY_WRITE,
    "/corral.v1.MemoryService/ListEvents": _MEMORY_READ,
    "/corral.v1.MemoryService/Search": _MEMORY_READ,
    "/corral.v1.MemoryService/GetNote": _MEMORY_READ,
    "/corral.v1.MemoryService/ListNotes": _MEMORY_READ,
}


def rule_for(method: str) -> Rule | str | None:
    if method in POLICY:
        return POLICY[method]
    service = method.lstrip("/").partition("/")[0]
    return POLICY.get(service)


def _roles_text(roles: frozenset[str]) -> str:
    names = sorted(roles)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def refusal(method: str, identity: Identity | None, request: Any) -> tuple[grpc.StatusCode, str] | None:
    """Why `identity` may not call `method` with `request` (code, message), None if it may."""
    found = rule_for(method)
    if found == OPEN:
        return None
    if not isinstance(found, Rule):
        return grpc.StatusCode.PERMISSION_DENIED, f"{method} is not open to any caller (no policy for it)"
    if identity is None:
        if found.key_callers:
            return None  # an API-key caller: its servicer checks the key
        return (
            grpc.StatusCode.UNAUTHENTICATED,
            f"{method} needs a client certificate from this deployment's CA "
            f"(role {_roles_text(found.roles)}); the call had none",
        )
    if identity.role not in found.roles:
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            f"{method} is for role {_roles_text(found.roles)}; the caller is {identity}",
        )
    if found.bound_to_name is not None:
        asked = getattr(request, found.bound_to_name, None)  # None: a streamed request, refused
        if asked != identity.name:
            return (
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method}: {identity} may act only as itself, not as {found.bound_to_name} {asked!r}",
            )
    return None


class AuthorizationInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Checks every call against POLICY before its handler runs (see the module's doc)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or rule_for(method) == OPEN:
            return handler
        for kind, make_handler, takes_request in _KINDS:
            behavior = getattr(handler, kind)
            if behavior is not None:
                return make_handler(  # type: ignore[no-any-return]
                    _guarded(behavior, method, takes_request),
                    handler.request_deserializer,
                    handler.response_serializer,
                )
        return handler


async def _check(method: str, request: Any, context: Context) -> None:
    identity = authenticate(context)
    refused = refusal(method, identity, request)
    if refused is not None:
        await context.abort(*refused)
    current_identity.set(identity)


def _guarded(behavior: Callable[..., Any], method: str, takes_request: bool) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):
        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            await _check(method, request if takes_request else None, context)
            async for response in behavior(request, context):
                yield response

        return stream

    async def call(request: Any, context: Context) -> Any:
        await _check(method, request if takes_request else None, context)
        result = behavior(request, context)
        return await result if inspect.isawaitable(result) else result

    return call


# Each kind of handler: its attribute, the grpc function that builds one, and whether its
# first argument is the request message (else an iterator of them, never bound to a name).
_KINDS: list[tuple[str, Callable[..., Any], bool]] = [
    ("unary_unary", grpc.unary_unary_rpc_method_handler, True),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, False),
]
