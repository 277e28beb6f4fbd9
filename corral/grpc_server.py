"""The shape every Corral gRPC server shares: errors to status codes, who may call what,
reflection, health, TLS, graceful stop.

Servicers raise `corral.errors` classes and nothing else; `ErrorInterceptor` (installed by
`new_server`) is the one place that turns them into status codes. `new_server` also installs
corral.authz's interceptor (each RPC's allowed roles); `bind` listens with TLS and `channel`
dials with TLS and the caller's certificate, both from the deployment's CA (corral.pki).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from grpc_health.v1 import _async as health_aio  # the asyncio servicer (health.aio)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from corral.errors import ERROR_CLASS_KEY, CorralError, Unauthenticated
from corral.grpc_errors import status_code

if TYPE_CHECKING:  # the gui service's interpreter has no pydantic: config is not imported here
    from corral.config import Settings

try:
    import structlog

    log: Any = structlog.get_logger()
except ImportError:  # the gui service runs on the sandbox's own interpreter, which has no structlog
    log = None

# The servicer context type every handler takes (grpc-stubs makes it generic).
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

# Generous message limits: outputs and files travel in single messages.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# A peer that comes back is used again within a second, whatever the length of its outage:
# gRPC's reconnect backoff otherwise grows 1.6x per failed attempt up to 120 s, so a channel
# that kept failing during a long outage only tried again many seconds after the peer returned
# (measured: gateway 503s for up to 6 s after a 20 s scheduler outage). Retrying a closed
# port every half second (+-20% jitter) costs nothing; the connect timeout stays gRPC's 20 s.
RECONNECT_INITIAL_BACKOFF_MS = 250
RECONNECT_MAX_BACKOFF_MS = 500
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", RECONNECT_INITIAL_BACKOFF_MS),
    ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_BACKOFF_MS),
    # Each channel owns its connections: one dialled afresh (the scheduler's, to an executor
    # that registers again) must not share an older channel's connection and its backoff.
    ("grpc.use_local_subchannel_pool", 1),
]


# The message a caller gets for an exception that is not a CorralError (the trace is logged).
INTERNAL_MESSAGE = "internal error in {method}; the server's log has the details"


def _log_unexpected(method: str) -> None:
    if log is not None:
        log.exception("unexpected error in a gRPC handler", method=method)
    else:
        logging.getLogger("corral").exception("unexpected error in gRPC handler %s", method)


async def abort_for(exc: Exception, context: Context, method: str) -> None:
    """Ends the call with the status `exc` stands for (always raises grpc.aio.AbortError)."""
    if isinstance(exc, CorralError):
        await context.abort(
            status_code(exc),
            exc.message,
            trailing_metadata=((ERROR_CLASS_KEY, type(exc).__name__), *exc.trailing_metadata()),
        )
    _log_unexpected(method)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE.format(method=method))


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Turns what a handler (unary or streaming) raises into the call's status: a CorralError
    into its code and message, anything else into INTERNAL with a short generic message, its
    trace logged. Aborts and cancellations pass through untouched."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # unknown method: grpc answers UNIMPLEMENTED
        method = handler_call_details.method
        for kind, make_handler, wrap in _HANDLER_KINDS:
            behavior = getattr(handler, kind)
            if behavior is not None:
                return make_handler(  # type: ignore[no-any-return]
                    wrap(behavior, method), handler.request_deserializer, handler.response_serializer
                )
        return handler


def _unary(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    if not inspect.iscoroutinefunction(behavior):
        return behavior  # a synchronous handler (none of Corral's): grpc runs it as it is

    async def handle(request: Any, context: Context) -> Any:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_for(exc, context, method)

    return handle


def _streaming(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(behavior):
        # A coroutine that writes with context.write() (as health's Watch does) is wrapped like
        # a unary one; a synchronous one is left as it is.
        return _unary(behavior, method)

    async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            async with contextlib.aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_for(exc, context, method)

    return handle


# Each kind of handler: its attribute on an RpcMethodHandler, the grpc function that builds
# one, and the wrapper that maps its errors.
_HANDLER_KINDS: list[tuple[str, Callable[..., Any], Callable[[Callable[..., Any], str], Callable[..., Any]]]] = [
    ("unary_unary", grpc.unary_unary_rpc_method_handler, _unary),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, _unary),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, _streaming),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, _streaming),
]


class LatencyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Observes each call's duration and status code in corral_grpc_server_handling_seconds
    (outermost, so refusals and mapped errors are counted with their codes)."""

    def __init__(self, histogram: Any) -> None:
        self.histogram = histogram

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, _, method = handler_call_details.method.strip("/").rpartition("/")
        for kind, make_handler, _wrap in _HANDLER_KINDS:
            behavior = getattr(handler, kind)
            if behavior is not None:
                if inspect.isasyncgenfunction(behavior):
                    timed = self._timed_stream
                elif inspect.iscoroutinefunction(behavior):
                    timed = self._timed_call
                else:
                    return handler  # a synchronous handler (none of Corral's): left as it is
                return make_handler(  # type: ignore[no-any-return]
                    timed(behavior, service, method), handler.request_deserializer, handler.response_serializer
                )
        return handler

    def _observe(self, service: str, method: str, started: float, context: Context, failed: BaseException | None) -> None:
        if isinstance(failed, asyncio.CancelledError):
            code = "CANCELLED"
        elif failed is not None and not isinstance(failed, grpc.aio.AbortError):
            code = "UNKNOWN"
        else:
            status = context.code()
            code = status.name if isinstance(status, grpc.StatusCode) else "OK"
        self.histogram.labels(service, method, code).observe(time.monotonic() - started)

    def _timed_call(self, behavior: Callable[..., Any], service: str, method: str) -> Callable[..., Any]:
        async def handle(request: Any, context: Context) -> Any:
            started, failed = time.monotonic(), None
            try:
                return await behavior(request, context)
            except BaseException as exc:
                failed = exc
                raise
            finally:
                self._observe(service, method, started, context, failed)

        return handle

    def _timed_stream(self, behavior: Callable[..., Any], service: str, method: str) -> Callable[..., Any]:
        async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
            started, failed = time.monotonic(), None
            try:
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response
            except BaseException as exc:
                failed = exc
                raise
            finally:
                self._observe(service, method, started, context, failed)

        return handle


def _rpc_histogram() -> Any:
    """The RPC latency histogram, or None where prometheus_client is absent (the gui service
    runs on the sandbox's own interpreter)."""
    try:
        from corral.service_metrics import RPC_SECONDS
    except ImportError:
        return None
    return RPC_SECONDS


def new_server(
    authorize: bool = True,
    gate: grpc.aio.ServerInterceptor | None = None,  # type: ignore[type-arg]
) -> grpc.aio.Server:
    """A server that maps errors and, unless `authorize` is False (only the gui service's,
    whose unix socket only its executor reaches), checks each caller against corral.authz;
    each call's latency goes to corral_grpc_server_handling_seconds. `gate`, if given, sees
    each call first (a scheduler standby's refusal)."""
    interceptors: list[grpc.aio.ServerInterceptor] = [ErrorInterceptor()]  # type: ignore[type-arg]
    if authorize:
        from corral.authz import AuthorizationInterceptor

        interceptors.insert(0, AuthorizationInterceptor())
    if gate is not None:
        interceptors.insert(0, gate)
    histogram = _rpc_histogram()
    if histogram is not None:
        interceptors.insert(0, LatencyInterceptor(histogram))
    return grpc.aio.server(interceptors=interceptors, options=CHANNEL_OPTIONS)


def add_reflection_and_health(
    server: grpc.aio.Server, service_names: Iterable[str]
) -> health_aio.HealthServicer:
    """Registers reflection (for grpcurl) and health (for probes); marks services SERVING."""
    names = list(service_names)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*names, reflection.SERVICE_NAME, health.SERVICE_NAME], server)
    return health_servicer


async def mark_serving(health_servicer: health_aio.HealthServicer, service_names: Iterable[str]) -> None:
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


def _read_tls_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise Unauthenticated(
            f"cannot read the {what} {path}: {exc.strerror or exc} (`corral up` makes the "
            "deployment's certificates in <data_dir>/pki, `corral pki init` elsewhere; "
            "CORRAL_TLS_DIR or CORRAL_TLS_*_FILE point at them)"
        ) from exc


def _tls_material(settings: Settings, role: str) -> tuple[bytes, bytes, bytes]:
    ca, cert, key = settings.tls_paths(role)
    return (
        _read_tls_file(ca, "CA certificate"),
        _read_tls_file(cert, f"{role} certificate"),
        _read_tls_file(key, f"{role} key"),
    )


def server_credentials(settings: Settings, role: str) -> grpc.ServerCredentials:
    """TLS with `role`'s certificate, demanding a client certificate from the deployment's CA.

    Demanded at the handshake because grpc's Python API has no middle way: without
    require_client_auth the server never asks for a certificate, so none is ever seen (the
    auth context then holds no peer identity at all). A caller without one is refused before
    any RPC (the client sees UNAVAILABLE, "certificate required"); health and reflection
    answer any holder of a certificate from the CA, whatever its role."""
    ca, cert, key = _tls_material(settings, role)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def public_server_credentials(settings: Settings, role: str) -> grpc.ServerCredentials:
    """TLS with `role`'s certificate that asks no client certificate: the scheduler's public
    listener, whose callers prove who they are with an API key (corral.authz `key_callers`)."""
    _ca, cert, key = _tls_material(settings, role)
    return grpc.ssl_server_credentials([(key, cert)], require_client_auth=False)


def channel_credentials(settings: Settings, role: str) -> grpc.ChannelCredentials:
    """TLS trusting only the deployment's CA, presenting `role`'s certificate."""
    ca, cert, key = _tls_material(settings, role)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def bind(server: grpc.aio.Server, address: str, settings: Settings, role: str, public: bool = False) -> int:
    """Listens on `address` (host:port) with TLS as `role` (demanding a client certificate,
    unless `public`); fails loudly when the port is taken."""
    try:
        credentials = (public_server_credentials if public else server_credentials)(settings, role)
    except Unauthenticated as exc:
        raise SystemExit(f"cannot listen on {address} with TLS: {exc.message}") from exc
    try:
        port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpc raises RuntimeError when binding fails
        raise SystemExit(f"cannot listen on {address}: {exc}") from exc
    if port == 0 and not address.startswith("unix:"):
        raise SystemExit(f"cannot listen on {address}: address in use or unavailable")
    return port


async def run_until_signalled(
    server: grpc.aio.Server,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    grace: float = 5.0,
) -> None:
    """Waits for SIGINT/SIGTERM, then stops the server gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    done = asyncio.ensure_future(server.wait_for_termination())
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait({done, waiter}, return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping", grace=grace)
    if on_stop is not None:
        await on_stop()
    await server.stop(grace)
    waiter.cancel()


# For a client that relays streams to slower readers (the gateway's SSE): without the
# bandwidth-delay probe a stream's receive window stays at gRPC's 64 KiB, so a reader that
# stops reading holds that much here and the sender waits (with it, the window grows to many
# MiB per stream on a fast link: 8 slow SSE readers took the gateway past 330 MiB).
BOUNDED_WINDOW_OPTIONS = [("grpc.http2.bdp_probe", 0)]


def channel(
    address: str, settings: Settings, role: str, extra: list[tuple[str, int]] | None = None
) -> grpc.aio.Channel:
    """A TLS channel to a Corral server, calling as `role` (its certificate from settings);
    `address` may list several replicas, comma-separated (replica_target)."""
    options: list[tuple[str, Any]] = [*CHANNEL_OPTIONS, *(extra or [])]
    if "," in address:
        address, more = replica_target(address)
        options += more
    return grpc.aio.secure_channel(address, channel_credentials(settings, role), options=options)


# Scheduler replicas (services/scheduler/leadership.py): gRPC watches each replica's health
# and sends calls only to one SERVING (the leader; a standby is NOT_SERVING), so a caller
# reaches the leader without knowing which replica it is. A call that still meets a standby
# (the moment of a takeover) is refused UNAVAILABLE before any reply, and gRPC retries it.
REPLICAS_SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
    "methodConfig": [{
        "name": [{}],
        "retryPolicy": {
            "maxAttempts": 5,
            "initialBackoff": "0.01s",
            "maxBackoff": "0.2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
})


def replica_target(addresses: str) -> tuple[str, list[tuple[str, Any]]]:
    """A gRPC target over every `host:port` in the comma-separated list (host names resolved
    now: gRPC takes lists of addresses only), and the channel options it needs: replicas'
    certificates must name the first host, which the channel checks them against."""
    hosts = [a.strip() for a in addresses.split(",") if a.strip()]
    resolved: list[str] = []
    for entry in hosts:
        host, _, port = entry.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise ValueError(f"replica address {entry!r} is not host:port")
        for info in socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM):
            ip = str(info[4][0])
            item = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
            if item not in resolved:
                resolved.append(item)
    scheme = "ipv6" if all(r.startswith("[") for r in resolved) else "ipv4"
    if scheme == "ipv4":
        resolved = [r for r in resolved if not r.startswith("[")]
    first_host = hosts[0].rpartition(":")[0].strip("[]")
    return f"{scheme}:{','.join(resolved)}", [
        ("grpc.service_config", REPLICAS_SERVICE_CONFIG),
        ("grpc.ssl_target_name_override", first_host),
        ("grpc.default_authority", hosts[0]),
    ]


def insecure_channel(address: str) -> grpc.aio.Channel:
    """Plaintext: only for the gui service's unix socket inside a sandbox's run directory."""
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
