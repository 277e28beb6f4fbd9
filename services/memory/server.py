"""The memory service process: history and notes over gRPC."""

from __future__ import annotations

from datetime import UTC, datetime

import structlog

from corral.config import Settings
from corral.grpc_server import (
    add_reflection_and_health,
    bind,
    mark_serving,
    new_server,
    run_until_signalled,
)
from corral.retention import cutoff, start_sweeping, stop_sweeping
from corral.service_metrics import serve_metrics
from corral.v1 import memory_pb2, memory_pb2_grpc
from services.memory.servicer import MemoryServicer
from services.memory.store import MemoryStore

log = structlog.get_logger()

SERVICE_NAME = memory_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name


async def serve(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = await MemoryStore.open(settings.database_url("memory"))
    server = new_server()
    memory_pb2_grpc.add_MemoryServiceServicer_to_server(MemoryServicer(store), server)
    health = add_reflection_and_health(server, [SERVICE_NAME])
    port = bind(server, settings.memory_address, settings, "memory")
    await server.start()
    await mark_serving(health, [SERVICE_NAME])
    log.info("memory serving", address=settings.memory_address, port=port)
    retention = start_sweeping("memory", settings, lambda: sweep_history(store, settings))
    metrics = serve_metrics(settings.memory_metrics_address, "CORRAL_MEMORY_METRICS_ADDRESS")
    if metrics is not None:
        log.info("metrics listening", address=metrics.address, path="/metrics")
    try:
        await run_until_signalled(server)
    finally:
        if metrics is not None:
            metrics.close()
        await stop_sweeping(retention)
        await store.close()


async def sweep_history(store: MemoryStore, settings: Settings) -> dict[str, int]:
    """The retention sweep's memory part: the history of tasks finished before the cutoff."""
    before = cutoff(settings)
    if before is None:
        return {}
    return {"task_histories": await store.remove_finished_before(datetime.fromtimestamp(before, UTC))}
