"""Metrics, traces and logs of a real deployment (scheduler, memory, bubblewrap executor and
gateway as processes): one task submitted through the gateway, then

- each service's /metrics answers with the figures it is there for (before: only the gateway
  had one, and no service's RPCs, steps, sandbox starts or history appends were counted);
- the task's spans, sent by every service to an OTLP receiver run here (opentelemetry-proto's
  own TraceService), share ONE trace id (before: no tracing at all);
- every service logs JSON lines, uvicorn's access lines included (before: uvicorn printed
  its own `INFO:     127.0.0.1:... "GET ..."` format beside structlog's).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from harness import Cluster, free_port, wait_for_http
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

SERVICES = ("memory", "scheduler", "executor", "gateway")
TERMINAL = {"completed", "failed", "cancelled"}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace endpoint keeping every span it is sent, with its service's name."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[str, str, str]] = []  # (service.name, trace id hex, span name)

    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                service = attributes.get("service.name", "")
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append((service, span.trace_id.hex(), span.name))
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> list[tuple[str, str, str]]:
        with self.lock:
            return [s for s in self.spans if s[1] == trace_id]


@dataclass
class Deployment:
    cluster: Cluster
    receiver: Receiver
    task_id: str
    metrics: dict[str, str] = field(default_factory=dict)  # service -> metrics URL


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    otlp_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    metrics = {name: f"127.0.0.1:{free_port()}" for name in ("scheduler", "executor", "memory")}
    # Under /tmp, not pytest's root-only tmp tree: sandboxes run as an unprivileged host uid.
    data_dir = Path(tempfile.mkdtemp(prefix="corral-observe-test-"))
    data_dir.chmod(0o755)
    cluster = Cluster.new(
        data_dir,
        CORRAL_LOG_JSON="true",
        CORRAL_EXECUTOR_CAPACITY="1",  # a second task waits: the queue's depth shows
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp_port}",
        OTEL_EXPORTER_OTLP_INSECURE="true",
        OTEL_BSP_SCHEDULE_DELAY="200",  # ms: spans reach the receiver soon after they end
        **{f"CORRAL_{name.upper()}_METRICS_ADDRESS": address for name, address in metrics.items()},
    )
    try:
        cluster.start_memory()
        cluster.start_scheduler()
        cluster.start_executor()
        wait_for_http(cluster.start("gateway", "gateway"), cluster.gateway_url + "/healthz")
        with httpx.Client(base_url=cluster.gateway_url, timeout=30) as api:
            created = api.post("/v1/tasks", json={"steps": [{"tool": "shell", "command": "echo traced"}]})
            assert created.status_code == 201, created.text
            task_id = created.json()["task_id"]
            deadline = time.monotonic() + 60
            status = ""
            while status not in TERMINAL and time.monotonic() < deadline:
                status = api.get(f"/v1/tasks/{task_id}").json()["status"]
                time.sleep(0.1)
            assert status == "completed", api.get(f"/v1/tasks/{task_id}").text
        yield Deployment(cluster, receiver, task_id, {n: f"http://{a}/metrics" for n, a in metrics.items()})
    finally:
        cluster.stop()
        server.stop(0)
        shutil.rmtree(data_dir, ignore_errors=True)


def scrape(url: str) -> str:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def sample_lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name)]


@pytest.mark.timeout(120)
def test_every_service_serves_its_metrics(deployment: Deployment) -> None:
    scheduler = scrape(deployment.metrics["scheduler"])
    assert 'corral_tasks{state="completed"} 1.0' in scheduler, scheduler
    assert "corral_tasks_queued 0.0" in scheduler
    assert any('method="SubmitTask"' in line for line in sample_lines(scheduler, "corral_grpc_server_handling_seconds_count"))

    executor = scrape(deployment.metrics["executor"])
    steps = sample_lines(executor, "corral_executor_step_duration_seconds_count")
    assert 'corral_executor_step_duration_seconds_count{state="completed",tool="shell"} 1.0' in steps, executor
    starts = sample_lines(executor, "corral_executor_sandbox_starts_total")
    assert any('driver="bubblewrap"' in line and not line.endswith(" 0.0") for line in starts), executor
    assert any('method="RunTask"' in line for line in sample_lines(executor, "corral_grpc_server_handling_seconds_count"))

    memory = scrape(deployment.metrics["memory"])
    appends = sample_lines(memory, "corral_memory_history_appends_total")
    assert appends and float(appends[0].split()[-1]) >= 1, memory
    assert any('method="AppendEvents"' in line for line in sample_lines(memory, "corral_grpc_server_handling_seconds_count"))

    gateway = httpx.get(deployment.cluster.gateway_url + "/metrics", timeout=10)
    assert gateway.status_code == 200 and "corral_gateway_requests_total" in gateway.text
    assert "corral_tasks_queued 0.0" in gateway.text, gateway.text


@pytest.mark.timeout(60)
def test_one_task_is_one_trace_across_the_four_services(deployment: Deployment) -> None:
    receiver = deployment.receiver
    with receiver.lock:
        submits = [s for s in receiver.spans if s[0] == "corral-gateway" and "/v1/tasks" in s[2] and "POST" in s[2]]
    assert submits, receiver.spans
    trace_id = submits[0][1]
    deadline = time.monotonic() + 20  # the batch processors send every 200 ms
    while time.monotonic() < deadline:
        services = {s[0] for s in receiver.of_trace(trace_id)}
        if services >= {f"corral-{name}" for name in SERVICES}:
            break
        time.sleep(0.2)
    spans = receiver.of_trace(trace_id)
    names = {(service, name) for service, _, name in spans}
    assert {s for s, _ in names} == {f"corral-{name}" for name in SERVICES}, sorted(names)
    assert ("corral-scheduler", "/corral.v1.SchedulerService/SubmitTask") in names, sorted(names)
    assert ("corral-executor", "/corral.internal.v1.ExecutorService/RunTask") in names, sorted(names)
    assert ("corral-memory", "/corral.v1.MemoryService/AppendEvents") in names, sorted(names)


@pytest.mark.timeout(60)
def test_every_service_logs_json_lines_in_one_format(deployment: Deployment) -> None:
    for name in SERVICES:
        records = []
        for line in deployment.cluster.services[name].log().splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        assert records, f"{name} wrote no JSON line"
        ours = [r for r in records if r.get("service") == name]
        assert ours and all({"event", "level", "timestamp"} <= set(r) for r in ours), records[:5]
    gateway = [json.loads(line) for line in deployment.cluster.services["gateway"].log().splitlines() if line.startswith("{")]
    access = [r for r in gateway if r.get("logger") == "uvicorn.access"]
    assert any(f"/v1/tasks/{deployment.task_id}" in r["event"] for r in access), gateway[-10:]
    # uvicorn's own start-up lines too, not its default "INFO:     Started server process".
    assert any(r.get("logger") == "uvicorn.error" for r in gateway), gateway[:10]
    assert "INFO:     " not in deployment.cluster.services["gateway"].log()


@pytest.mark.timeout(60)
def test_a_task_waiting_for_the_busy_executor_is_counted_as_queued(deployment: Deployment) -> None:
    """Last (it leaves tasks behind): the executor runs one task at a time, so a second waits."""
    with httpx.Client(base_url=deployment.cluster.gateway_url, timeout=30) as api:
        busy = api.post("/v1/tasks", json={"steps": [{"tool": "shell", "command": "sleep 60"}]}).json()["task_id"]
        deadline = time.monotonic() + 30
        while api.get(f"/v1/tasks/{busy}").json()["status"] != "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        waiting = api.post("/v1/tasks", json={"steps": [{"tool": "shell", "command": "true"}]}).json()["task_id"]
        try:
            assert api.get(f"/v1/tasks/{waiting}").json()["status"] == "scheduled"
            assert "corral_tasks_queued 1.0" in scrape(deployment.metrics["scheduler"])
            assert 'corral_tasks{state="running"} 1.0' in scrape(deployment.metrics["scheduler"])
            assert "corral_tasks_queued 1.0" in api.get("/metrics").text
        finally:
            for task_id in (waiting, busy):
                api.post(f"/v1/tasks/{task_id}/cancel")
