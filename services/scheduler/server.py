"""Builds and runs the scheduler's gRPC server."""

from __future__ import annotations

import asyncio
import os

import structlog
from grpc_health.v1 import health_pb2

from corral.api_keys import address_host, keys_required
from corral.audit import AuditLog
from corral.config import Settings
from corral.db import create_engine
from corral.grpc_server import (
    add_reflection_and_health,
    bind,
    mark_serving,
    new_server,
    run_until_signalled,
)
from corral.internal.v1 import registry_pb2, registry_pb2_grpc, sandbox_access_pb2_grpc
from corral.retention import start_sweeping, stop_sweeping
from corral.service_metrics import LoopCollector, serve_metrics
from corral.v1 import keys_pb2_grpc, sandbox_pb2, sandbox_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc

from .core import Scheduler
from .key_servicer import SERVICE_NAME as KEY_SERVICE_NAME
from .key_servicer import KeyServicer
from .key_store import KeyStore
from .leadership import STEPPED_DOWN_EXIT, Leadership, StandbyInterceptor
from .metrics import scheduler_metrics
from .principal import Authenticator
from .registry_servicer import ExecutorRegistryServicer
from .retention import sweep
from .sandbox_access import SERVICE_NAME as SANDBOX_ACCESS_SERVICE_NAME
from .sandbox_access import SandboxAccessServicer
from .sandbox_secrets import SandboxSecretsStore
from .sandbox_servicer import SandboxServicer
from .sandboxes import SandboxCoordinator, SandboxStore
from .servicer import SchedulerServicer
from .store import TaskStore

log = structlog.get_logger()

SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name
SANDBOX_SERVICE_NAME = sandbox_pb2.DESCRIPTOR.services_by_name["SandboxService"].full_name
REGISTRY_SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["ExecutorRegistryService"].full_name
SERVICE_NAMES = [
    SERVICE_NAME, SANDBOX_SERVICE_NAME, KEY_SERVICE_NAME, REGISTRY_SERVICE_NAME, SANDBOX_ACCESS_SERVICE_NAME
]


async def serve(settings: Settings) -> None:
    listen = settings.scheduler_listen_address or settings.scheduler_address
    if "," in listen:
        raise SystemExit(
            "CORRAL_SCHEDULER_ADDRESS lists several replicas: set CORRAL_SCHEDULER_LISTEN_ADDRESS "
            "to the one host:port this replica listens on"
        )
    required = keys_required(settings, "scheduler", address_host(listen))
    engine = create_engine(settings.database_url("scheduler"))
    leadership = Leadership(engine, settings.scheduler_lease_seconds)
    audit = AuditLog(settings.audit_log_path)
    keys = KeyStore(engine)
    auth = Authenticator(keys, required, audit)
    scheduler = Scheduler(TaskStore(engine), settings)
    scheduler.audit = audit
    sandboxes = SandboxCoordinator(SandboxStore(engine), scheduler.executors, settings)
    scheduler.sandboxes = sandboxes
    server = new_server(gate=StandbyInterceptor(leadership))
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(SchedulerServicer(scheduler, auth, audit), server)
    sandbox_pb2_grpc.add_SandboxServiceServicer_to_server(
        SandboxServicer(sandboxes, auth, audit, scheduler.submissions, settings, scheduler.idempotency), server
    )
    keys_pb2_grpc.add_KeyServiceServicer_to_server(KeyServicer(keys, auth, audit), server)
    sandbox_access_pb2_grpc.add_SandboxAccessServiceServicer_to_server(
        SandboxAccessServicer(sandboxes, SandboxSecretsStore(engine), auth), server
    )
    registry_pb2_grpc.add_ExecutorRegistryServiceServicer_to_server(
        ExecutorRegistryServicer(scheduler, settings.heartbeat_interval_seconds), server
    )
    health = add_reflection_and_health(server, SERVICE_NAMES)
    bind(server, listen, settings, "scheduler")
    if settings.scheduler_public_address:
        # API-key clients without a certificate; the same auth mode holds for its interface.
        keys_required(settings, "scheduler's public listener", address_host(settings.scheduler_public_address))
        bind(server, settings.scheduler_public_address, settings, "scheduler", public=True)
        log.info("public listener for API-key clients", address=settings.scheduler_public_address)
    # A standby listens too: it answers UNAVAILABLE, and health NOT_SERVING (out of a
    # Kubernetes Service's endpoints), until it leads.
    await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    log.info("scheduler listening", address=listen)
    await leadership.acquire()
    # SQLite has no lease to fence on (one scheduler): its writes then take the direct way.
    scheduler.store.fence = leadership.fence if leadership.enabled else None
    scheduler.leader_epoch = leadership.epoch
    stepping_down = asyncio.create_task(_exit_when_deposed(leadership), name="step-down")
    await scheduler.start()
    sandboxes.start()
    retention = start_sweeping("scheduler", settings, lambda: sweep(scheduler.store, scheduler.idempotency, settings))
    log.info("API keys", required=required, audit_log=str(audit.path))
    leadership.leading = True
    await mark_serving(health, SERVICE_NAMES)
    collector = LoopCollector(asyncio.get_running_loop(), lambda: scheduler_metrics(scheduler))
    metrics = serve_metrics(settings.scheduler_metrics_address, "CORRAL_SCHEDULER_METRICS_ADDRESS", [collector])
    if metrics is not None:
        log.info("metrics listening", address=metrics.address, path="/metrics")

    async def shutdown() -> None:
        leadership.leading = False  # new calls go to the next leader
        await health.enter_graceful_shutdown()
        await stop_sweeping(retention)
        await sandboxes.stop()
        await scheduler.stop()
        stepping_down.cancel()
        await leadership.stop()

    try:
        await run_until_signalled(server, on_stop=shutdown)
    finally:
        if metrics is not None:
            metrics.close()
        await scheduler.store.close()
        await engine.dispose()
        audit.close()


async def _exit_when_deposed(leadership: Leadership) -> None:
    """A deposed leader stops at once, without a graceful stop (its writes would be refused
    anyway); its supervisor starts it again, as a standby."""
    await leadership.lost.wait()
    log.error("exiting: another scheduler replica leads now", exit_status=STEPPED_DOWN_EXIT)
    os._exit(STEPPED_DOWN_EXIT)
