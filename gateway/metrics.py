"""The gateway's /metrics in Prometheus text format: its own request counts, the queue's depth
(corral_tasks_queued), and each executor's network refusals and undelivered history, asked of
the executors (through the scheduler) at scrape time.

Each app has its own registry (tests run several gateways in one process). Requests are
counted by route template, not raw path, so ids do not make a series each.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.internal.v1 import registry_pb2


class ExecutorCollector(Collector):
    """The executors' figures of the scrape in progress (set by the /metrics handler)."""

    def __init__(self) -> None:
        self.executors: Sequence[registry_pb2.ExecutorInfo] = ()
        self.queued_tasks = 0

    def collect(self) -> Iterable[Metric]:
        labels = ["executor_id", "driver"]
        connections = CounterMetricFamily(
            "corral_sandbox_network_refused_connections",
            "Connections refused by the sandboxes' network, per executor, since it started.",
            labels=labels,
        )
        lookups = CounterMetricFamily(
            "corral_sandbox_network_refused_lookups",
            "Name lookups refused by the sandboxes' resolver, per executor, since it started.",
            labels=labels,
        )
        undelivered = GaugeMetricFamily(
            "corral_executor_history_undelivered_bytes",
            "History the executor has not delivered to the memory service yet (queued or spooled).",
            labels=labels,
        )
        dropped = CounterMetricFamily(
            "corral_executor_history_dropped",
            "History entries the executor dropped (its spool was full), since it started.",
            labels=labels,
        )
        up = GaugeMetricFamily("corral_executor_up", "1 while the executor heartbeats.", labels=labels)
        running = GaugeMetricFamily("corral_executor_running_tasks", "Tasks running on the executor.", labels=labels)
        capacity = GaugeMetricFamily("corral_executor_capacity", "Tasks the executor runs at once.", labels=labels)
        for e in self.executors:
            values = [e.executor_id, e.driver]
            connections.add_metric(values, e.network_refused_connections)
            lookups.add_metric(values, e.network_refused_lookups)
            undelivered.add_metric(values, e.history_undelivered_bytes)
            dropped.add_metric(values, e.history_dropped)
            up.add_metric(values, 1 if e.alive else 0)
            running.add_metric(values, e.running)
            capacity.add_metric(values, e.capacity)
        queued = GaugeMetricFamily(
            "corral_tasks_queued", "Tasks waiting for an executor (scheduled, not yet running)."
        )
        queued.add_metric([], self.queued_tasks)
        return [connections, lookups, undelivered, dropped, up, running, capacity, queued]


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "corral_gateway_requests",
            "HTTP requests answered by the gateway, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.executors = ExecutorCollector()
        self.registry.register(self.executors)


class RequestCounter:
    """ASGI middleware counting each HTTP response by route template and status."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                self.metrics.requests.labels(scope["method"], route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
