#!/usr/bin/env python3
"""How fast a returning service is used again (a benchmark, not a test).

    PYTHONPATH=$PWD .venv/bin/python bench/rejoin.py                 # outages of 5, 10 and 30 s
    PYTHONPATH=$PWD .venv/bin/python bench/rejoin.py --outage 10 --outage 60

Starts real memory, scheduler, executor (bubblewrap) and gateway processes (tests/harness.py),
then for each outage length:
  (a) kill -9 the executor, queue tasks while it is away, restart it, and time from the moment
      the scheduler lists it alive again to the first queued task's `started` event;
  (b) kill -9 the scheduler, restart it after the outage, and time from the moment it answers
      a health check to the gateway's first 200 on GET /v1/tasks, and to the executor listed
      alive again (registered anew).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import Cluster, wait_for_http

from corral.internal.v1 import registry_pb2, registry_pb2_grpc
from corral.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2

POLL_SECONDS = 0.01
QUEUED_TASKS = 4


def executor_alive(chan: grpc.Channel, executor_id: str) -> bool:
    stub = registry_pb2_grpc.ExecutorRegistryServiceStub(chan)
    executors = stub.ListExecutors(registry_pb2.ListExecutorsRequest(), timeout=5).executors
    return any(e.executor_id == executor_id and e.alive for e in executors)


def wait_until(condition: Callable[[], object], limit: float, what: str) -> float:
    """Polls `condition` (a callable) until true; returns the wall time it became true."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if condition():
                return time.time()
        except Exception:  # a service still coming up
            pass
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"{what} after {limit}s")


def executor_rejoin(cluster: Cluster, outage: float) -> float:
    """Milliseconds from the executor listed alive again to its first queued task started."""
    executor_id = cluster.executor_ids["executor"]
    with cluster.channel(cluster.scheduler_address) as chan:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(chan)
        spec = task_pb2.TaskSpec(steps=[task_pb2.Step(shell=task_pb2.ShellAction(command="true"))])
        cluster.services["executor"].stop(signal.SIGKILL)
        # Submitted at once, as under load: the scheduler tries the dead executor before it
        # declares it lost, which is what used to start its channel's reconnect backoff.
        ids = [stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec)).task_id for _ in range(QUEUED_TASKS)]
        time.sleep(outage)
        directory = cluster.issue("executor", executor_id)  # start_executor's certificate, without its wait
        cluster.start(
            "executor",
            "services.executor",
            CORRAL_TLS_CERT_FILE=str(directory / "executor.crt"),
            CORRAL_TLS_KEY_FILE=str(directory / "executor.key"),
        )
        registered = wait_until(lambda: executor_alive(chan, executor_id), 60, "the executor never registered")

        def first_start() -> float | None:
            starts = []
            for task_id in ids:
                for response in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task_id), timeout=120):
                    if response.event.HasField("started"):
                        starts.append(response.event.time.ToNanoseconds() / 1e9)
                    if response.event.HasField("finished"):
                        break
            return min(starts) if starts else None

        started = first_start()
    if started is None:
        raise RuntimeError("no queued task started")
    return (started - registered) * 1000


def scheduler_return(cluster: Cluster, outage: float) -> tuple[float, float]:
    """Milliseconds from the scheduler answering again to the gateway's first 200, and to the
    executor registered with it again."""
    cluster.services["scheduler"].stop(signal.SIGKILL)
    with httpx.Client(base_url=cluster.gateway_url, timeout=5) as api:
        wait_until(lambda: api.get("/v1/tasks").status_code == 503, 30, "the gateway never saw the outage")
        time.sleep(outage)
        cluster.start("scheduler", "services.scheduler")  # no wait: timed below

        def scheduler_serving() -> bool:
            with cluster.channel(cluster.scheduler_address) as chan:
                reply = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return reply.status == health_pb2.HealthCheckResponse.SERVING

        answering = wait_until(scheduler_serving, 60, "the scheduler never came back")
        served = wait_until(lambda: api.get("/v1/tasks").status_code == 200, 180, "the gateway never served")
    with cluster.channel(cluster.scheduler_address) as chan:
        executor_id = cluster.executor_ids["executor"]
        registered = wait_until(lambda: executor_alive(chan, executor_id), 60, "the executor never registered")
    return (served - answering) * 1000, (registered - answering) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outage", type=float, action="append", help="outage length in seconds (repeatable)")
    args = parser.parse_args()
    outages = args.outage or [5.0, 10.0, 30.0]
    data_dir = Path(tempfile.mkdtemp(prefix="corral-bench-rejoin-"))
    data_dir.chmod(0o755)  # sandboxes run as an unprivileged host uid
    cluster = Cluster.new(data_dir)
    try:
        cluster.start_memory()
        cluster.start_scheduler()
        cluster.start_executor()
        gateway = cluster.start("gateway", "gateway")
        wait_for_http(gateway, cluster.gateway_url + "/openapi.json")
        for outage in outages:
            figure = executor_rejoin(cluster, outage)
            print(f"outage {outage:5.1f} s  executor rejoin: queued task started {figure:7.0f} ms after registration", flush=True)
        for outage in outages:
            served, registered = scheduler_return(cluster, outage)
            print(f"outage {outage:5.1f} s  gateway: first 200 {served:7.0f} ms after scheduler answers", flush=True)
            print(f"outage {outage:5.1f} s  executor registered {registered:7.0f} ms after scheduler answers", flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
