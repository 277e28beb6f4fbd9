"""The REST gateway: builds the FastAPI app from its routers (gateway/routers/).

Handlers stay thin: parse and validate, make one or two gRPC calls, render the model. What
they need (settings, gRPC stubs, the Jupyter proxy) is made in the lifespan, kept on
app.state, and handed to them as dependencies (gateway/deps.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from corral.config import Settings
from corral.tracing import instrument_gateway
from gateway.backends import Backends
from gateway.browser_guard import BrowserGuard, is_loopback
from gateway.deps import SandboxStubs
from gateway.errors import install_error_handlers
from gateway.jupyter_proxy import JupyterProxy
from gateway.metrics import GatewayMetrics, RequestCounter
from gateway.openapi import install_openapi, operation_id
from gateway.routers import desktop, health, history, keys, metrics, sandbox_calls, sandboxes, seed, tasks
from gateway.routers.computer_use import router as computer_use_router
from gateway.routers.contexts import router as contexts_router
from gateway.sandbox_relay import SandboxRelay

# First the sandbox calls, the many small requests of an agent's loop: FastAPI tries the routes
# in this order, and matching was a third of such a request's time in the gateway when they came
# after the 17 routes of seed, tasks, history and sandboxes (no path of theirs overlaps these).
ROUTERS = (
    sandbox_calls.router, seed.router, tasks.router, history.router, sandboxes.router, desktop.router, keys.router,
    health.router, metrics.router, computer_use_router, contexts_router,
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # grpc.aio channels belong to the running event loop, so they are made here.
    backends = Backends.connect(app.state.settings)
    app.state.backends = backends
    app.state.relay = SandboxRelay(app.state.settings)
    app.state.sandbox_stubs = SandboxStubs.over(backends, app.state.relay, app.state.settings)
    app.state.jupyter = JupyterProxy(app.state.relay)
    try:
        yield
    finally:
        await app.state.jupyter.close()
        await app.state.relay.close()
        await backends.close()


def create_app(settings: Settings) -> FastAPI:
    # /docs and /redoc with Swagger UI's and ReDoc's files served from the package, not a CDN:
    # they work on a host without internet.
    app = FastAPIOffline(
        title="Corral",
        version="1",
        description="Schedule agents' tasks into isolated sandboxes and follow them.",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.metrics = GatewayMetrics()
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(
        BrowserGuard, loopback_only=is_loopback(settings.gateway_host), audit_path=settings.audit_log_path
    )
    # Outermost: the guard's refusals are counted too.
    app.add_middleware(RequestCounter, metrics=app.state.metrics)
    for router in ROUTERS:
        app.include_router(router)
    instrument_gateway(app)  # when tracing is on (corral.tracing)
    return app
