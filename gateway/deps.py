"""Route dependencies: what handlers need from the app (settings, gRPC stubs, the Jupyter
proxy), all made once in the app's lifespan and kept on app.state.

A handler names what it uses, e.g. `backends: BackendsDep`; nothing is captured in closures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from corral.config import Settings
from corral.internal.v1 import sandbox_access_pb2_grpc
from corral.v1 import sandbox_pb2_grpc
from gateway.backends import Backends
from gateway.call_routes import CallRoutes
from gateway.jupyter_proxy import JupyterProxy
from gateway.sandbox_relay import SandboxRelay


@dataclass
class SandboxStubs:
    """The scheduler's public SandboxService and its internal SandboxAccessService (the token
    check, the sandbox's executor and Jupyter start that only the gateway may ask for)."""

    sandboxes: sandbox_pb2_grpc.SandboxServiceAsyncStub
    access: sandbox_access_pb2_grpc.SandboxAccessServiceAsyncStub
    # Deadline of the quick calls (as Backends.timeout).
    timeout: float
    # The quick interactive calls, straight to the sandbox's executor once routed.
    calls: CallRoutes

    @classmethod
    def over(cls, backends: Backends, relay: SandboxRelay, settings: Settings) -> SandboxStubs:
        channel = backends.scheduler_channel
        sandboxes = sandbox_pb2_grpc.SandboxServiceStub(channel)
        access = sandbox_access_pb2_grpc.SandboxAccessServiceStub(channel)
        calls = CallRoutes(sandboxes, access, relay, settings.gateway_call_route_seconds, backends.timeout)
        return cls(sandboxes=sandboxes, access=access, timeout=backends.timeout, calls=calls)


def get_settings(conn: HTTPConnection) -> Settings:
    settings: Settings = conn.app.state.settings
    return settings


async def get_backends(conn: HTTPConnection) -> Backends:
    backends: Backends = conn.app.state.backends
    return backends


def get_sandbox_stubs(conn: HTTPConnection) -> SandboxStubs:
    stubs: SandboxStubs = conn.app.state.sandbox_stubs
    return stubs


async def get_call_routes(conn: HTTPConnection) -> CallRoutes:
    routes: CallRoutes = conn.app.state.sandbox_stubs.calls
    return routes


async def get_jupyter(conn: HTTPConnection) -> JupyterProxy:
    proxy: JupyterProxy = conn.app.state.jupyter
    return proxy


async def get_relay(conn: HTTPConnection) -> SandboxRelay:
    relay: SandboxRelay = conn.app.state.relay
    return relay


# The dependencies are coroutines (or wrapped in one): FastAPI runs a plain function's in its
# thread pool, a hop per dependency per request (a few ms each on a busy machine).
async def settings_dep(conn: HTTPConnection) -> Settings:
    return get_settings(conn)


async def sandbox_stubs_dep(conn: HTTPConnection) -> SandboxStubs:
    return get_sandbox_stubs(conn)


SettingsDep = Annotated[Settings, Depends(settings_dep)]
BackendsDep = Annotated[Backends, Depends(get_backends)]
SandboxStubsDep = Annotated[SandboxStubs, Depends(sandbox_stubs_dep)]
CallRoutesDep = Annotated[CallRoutes, Depends(get_call_routes)]
JupyterDep = Annotated[JupyterProxy, Depends(get_jupyter)]
RelayDep = Annotated[SandboxRelay, Depends(get_relay)]
