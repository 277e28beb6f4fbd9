"""`python -m gateway`: serve the REST gateway with uvicorn until SIGINT/SIGTERM."""

from __future__ import annotations

import uvicorn

from corral import event_loop
from corral.api_keys import keys_required
from corral.config import Settings, load_settings
from corral.errors import Unauthenticated
from corral.grpc_server import channel_credentials
from corral.logs import configure_logging
from corral.tracing import configure_tracing, shutdown
from gateway import access_log
from gateway.app import create_app
from gateway.serving import protocol_for


def main() -> None:
    settings = load_settings()
    configure_logging("gateway", settings.log_level, settings.log_json)
    configure_tracing("gateway", settings)  # before the app makes its gRPC channels
    # Beyond loopback, refuses to start unless auth is decided (CORRAL_AUTH=keys or off).
    keys_required(settings, "gateway", settings.gateway_host)
    access_log.install()
    try:  # before uvicorn, so a missing certificate is one line, not a startup traceback
        channel_credentials(settings, "gateway")
    except Unauthenticated as exc:
        raise SystemExit(f"gateway: {exc.message}") from exc
    try:
        serve(settings)
    finally:
        shutdown()


def serve(settings: Settings) -> None:
    uvicorn.run(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_level=settings.log_level.lower(),
        # uvicorn's server and access logs go through corral.logs (one format for the service).
        log_config=None,
        # Keep-alive comments keep SSE streams open; let uvicorn end them quickly on shutdown.
        timeout_graceful_shutdown=5,
        # Requests that are slow to arrive are cut off (gateway/serving.py), idle connections too.
        http=protocol_for(settings),
        loop=event_loop.chosen(settings.event_loop),
        timeout_keep_alive=max(1, round(settings.gateway_keep_alive_seconds)),
    )


if __name__ == "__main__":
    main()
