"""Each service's Prometheus metrics and the loopback HTTP endpoint that serves them.

The metrics are module-level objects in prometheus_client's default registry: each service is
its own process, and a module is imported once, so a server started twice in one process (tests)
shares them rather than registering them twice. The endpoint is prometheus_client's own HTTP
server (a daemon thread), off unless CORRAL_<SERVICE>_METRICS_ADDRESS names host:port; a gauge
that must ask the service's asyncio loop (the scheduler's tasks by state) does it at scrape time
through `LoopCollector`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

# Step and RPC durations range from milliseconds (a file read) to many minutes (a build).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)

RPC_SECONDS = Histogram(
    "corral_grpc_server_handling_seconds",
    "Time a gRPC server took to answer a call (a stream: until it ended), by service, method and code.",
    ["service", "method", "code"],
    buckets=DURATION_BUCKETS,
)
SANDBOX_STARTS = Counter(
    "corral_executor_sandbox_starts",
    "Sandboxes the executor started, by driver and kind (cold: for a task, as it came; warm: into the "
    "warm pool; long_lived: a sandbox of the sandbox API).",
    ["driver", "kind"],
)
WARM_POOL_CLAIMS = Counter(
    "corral_executor_warm_pool_claims",
    "Sandboxes asked of the warm pool, by driver and result (hit: a started one was ready; miss: none was).",
    ["driver", "result"],
)
STEP_SECONDS = Histogram(
    "corral_executor_step_duration_seconds",
    "Time a step took, by tool and state.",
    ["tool", "state"],
    buckets=DURATION_BUCKETS,
)

# How long a scrape waits for the service's loop to produce its figures.
SCRAPE_TIMEOUT_SECONDS = 5.0


class LoopCollector(Collector):
    """Metrics produced by a coroutine on the service's event loop, run at each scrape from
    the HTTP server's thread (what the scrape sees is read when it asks, not cached)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, collect: Callable[[], Coroutine[Any, Any, list[Metric]]]) -> None:
        self.loop = loop
        self.produce = collect

    def collect(self) -> Iterable[Metric]:
        if self.loop.is_closed():
            return []
        future: concurrent.futures.Future[list[Metric]] = asyncio.run_coroutine_threadsafe(self.produce(), self.loop)
        return future.result(SCRAPE_TIMEOUT_SECONDS)

    def describe(self) -> Iterable[Metric]:
        return []  # not asked at registration (collect() needs the loop running)


class MetricsEndpoint:
    """The HTTP server of one service's /metrics (any path answers, as prometheus_client's does)."""

    def __init__(self, server: Any, thread: Any, address: str, collectors: list[Collector]) -> None:
        self.server, self.thread, self.address, self.collectors = server, thread, address, collectors

    def close(self) -> None:
        for collector in self.collectors:
            REGISTRY.unregister(collector)
        self.server.shutdown()
        self.server.server_close()


def split_address(address: str, setting: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"{setting}={address!r}: expected host:port (for example 127.0.0.1:9464)")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve_metrics(
    address: str, setting: str, collectors: Iterable[Collector] = ()
) -> MetricsEndpoint | None:
    """Starts the endpoint on `address` (None when it is empty: metrics off)."""
    if not address:
        return None
    host, port = split_address(address, setting)
    added = list(collectors)
    for collector in added:
        REGISTRY.register(collector)
    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as exc:
        for collector in added:
            REGISTRY.unregister(collector)
        raise SystemExit(f"cannot serve metrics on {address} ({setting}): {exc.strerror or exc}") from exc
    return MetricsEndpoint(server, thread, f"{host}:{server.server_port}", added)
