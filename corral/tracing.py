"""OpenTelemetry tracing of a task across the gateway, scheduler, executor and memory: off
unless configured (CORRAL_TRACING, or the standard OTEL_EXPORTER_OTLP_ENDPOINT /
OTEL_TRACES_EXPORTER variables).

Each gRPC hop is traced by opentelemetry-instrumentation-grpc (the aio server and client
interceptors carry the trace context in the call's metadata); the gateway's requests by the
FastAPI instrumentation. Two hops are not calls made while handling another, so the context
is carried by hand: the scheduler's dispatch of a task (`remember`/`resume`: the context of
the SubmitTask that stored it), and the executor's history delivery (batched in the
background: each task's context is kept with it).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context

if TYPE_CHECKING:
    from corral.config import Settings

_enabled = False


def exporter_kind(settings: Settings) -> str:
    """otlp, console or off, from CORRAL_TRACING and the standard OTEL_* variables."""
    if settings.tracing != "auto":
        return settings.tracing
    named = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named in ("otlp", "console"):
        return named
    if named == "none":
        return "off"
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return "otlp"
    return "off"


def configure_tracing(service: str, settings: Settings) -> bool:
    """Installs the tracer provider and the gRPC instrumentation (before any server or channel
    is made); returns whether tracing is on."""
    global _enabled
    kind = exporter_kind(settings)
    if kind == "off":
        return False
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporter: SpanExporter
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # endpoint, TLS and headers from the OTEL_EXPORTER_OTLP_* variables
    else:
        exporter = ConsoleSpanExporter()
    # OTEL_SERVICE_NAME, if set, names the service; else corral-<service>.
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or f"corral-{service}"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    GrpcAioInstrumentorServer().instrument()  # type: ignore[no-untyped-call]
    GrpcAioInstrumentorClient().instrument()  # type: ignore[no-untyped-call]
    _enabled = True
    return True


def instrument_gateway(app: Any) -> None:
    if _enabled:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app)


def shutdown() -> None:
    """Sends the spans still buffered (at a service's stop)."""
    if _enabled:
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        if hasattr(provider, "shutdown"):
            provider.shutdown()


class Contexts:
    """The trace context of each task, kept from where it was current to where the task's work
    goes on outside it (bounded: the oldest are forgotten first)."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._kept: OrderedDict[str, otel_context.Context] = OrderedDict()

    def remember(self, task_id: str) -> None:
        if not _enabled or task_id in self._kept:
            return
        self._kept[task_id] = otel_context.get_current()
        while len(self._kept) > self.limit:
            self._kept.popitem(last=False)

    def attach(self, task_id: str) -> object | None:
        """Makes the task's context current (a token for `detach`, None if none is kept)."""
        found = self._kept.get(task_id) if _enabled else None
        return None if found is None else otel_context.attach(found)

    def forget(self, task_id: str) -> None:
        self._kept.pop(task_id, None)

    @staticmethod
    def detach(token: object | None) -> None:
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]
