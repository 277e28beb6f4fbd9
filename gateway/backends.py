"""The gateway's gRPC connections to the scheduler and memory services."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from corral.config import Settings
from corral.grpc_server import BOUNDED_WINDOW_OPTIONS, channel
from corral.v1 import memory_pb2_grpc, scheduler_pb2_grpc
from gateway.errors import from_rpc_error

HEALTH_CHECK_TIMEOUT_SECONDS = 3.0


@asynccontextmanager
async def upstream(service: str) -> AsyncIterator[None]:
    """Turns a failed gRPC call to `service` into the matching HTTP error (the status of its
    code's corral.errors class, see gateway.errors.from_rpc_error)."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc, service) from None


@dataclass
class Backends:
    scheduler_channel: grpc.aio.Channel
    memory_channel: grpc.aio.Channel
    scheduler: scheduler_pb2_grpc.SchedulerServiceAsyncStub
    memory: memory_pb2_grpc.MemoryServiceAsyncStub
    # Deadline for unary calls, so a hung service gives the client a 504, not a hang.
    timeout: float

    @classmethod
    def connect(cls, settings: Settings) -> Backends:
        # Bounded windows: SSE readers and output downloads follow the scheduler at their pace.
        scheduler_channel = channel(settings.scheduler_address, settings, "gateway", BOUNDED_WINDOW_OPTIONS)
        memory_channel = channel(settings.memory_address, settings, "gateway")
        return cls(
            scheduler_channel=scheduler_channel,
            memory_channel=memory_channel,
            scheduler=scheduler_pb2_grpc.SchedulerServiceStub(scheduler_channel),
            memory=memory_pb2_grpc.MemoryServiceStub(memory_channel),
            timeout=settings.gateway_rpc_timeout_seconds,
        )

    async def close(self) -> None:
        await asyncio.gather(self.scheduler_channel.close(None), self.memory_channel.close(None))

    async def health(self) -> dict[str, str]:
        """'serving', or what is wrong, for each service."""
        names = ("scheduler", "memory")
        channels = (self.scheduler_channel, self.memory_channel)
        results = await asyncio.gather(*(_check(channel) for channel in channels))
        return dict(zip(names, results, strict=True))


async def _check(channel: grpc.aio.Channel) -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = await stub.Check(
            health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_CHECK_TIMEOUT_SECONDS
        )
    except grpc.aio.AioRpcError as exc:
        return f"{exc.code().name.lower()}: {exc.details()}"
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return "serving"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)).lower()
