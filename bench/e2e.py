#!/usr/bin/env python3
"""End-to-end figures of the embedded system (a benchmark, not a test).

    .venv/bin/python bench/e2e.py                         # starts `corral up` on free ports
    .venv/bin/python bench/e2e.py --scheduler 127.0.0.1:50051   # against a running system
    .venv/bin/python bench/e2e.py --driver docker --warm-pool 2  # docker sandboxes (scripts/build-images)
    .venv/bin/python bench/e2e.py --warm-pool 0           # bubblewrap without its warm pool
    .venv/bin/python bench/e2e.py --auth keys             # with API keys (a tenant's key per call)

Measures, through the scheduler's gRPC API (SubmitTask + WatchTask):
  (a) latency from SubmitTask to the first output event of a one-step `echo x` task,
      p50/p95 over N sequential tasks (and to the task's end);
  (b) throughput: B one-step tasks submitted at once, tasks/second until all finished;
and, for comparison, the median time of a bare `bwrap --unshare-all ... true` (and, with the
docker driver, of a bare `docker run --rm IMAGE true`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from corral_up import corral_up_process, free_port

from corral.client import CorralClient
from corral.config import Settings
from corral.schema import TASK_STATE_NAMES, TaskRequest
from corral.v1 import task_pb2

ECHO_TASK = TaskRequest.model_validate({"steps": [{"tool": "shell", "command": "echo x"}]})


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))  # nearest rank
    return ordered[rank]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


# Where the time to first output goes, from the events' own timestamps (one machine, one clock).
PHASES = {
    "SubmitTask call": ("submit", "submitted"),
    "scheduled -> executor started the task": ("scheduled", "started"),
    "task started -> step started (sandbox)": ("started", "step_started"),
    "step started -> first output (in sandbox)": ("step_started", "output"),
    "first output -> client has it": ("output", "received"),
}


async def latency(
    client: CorralClient, count: int
) -> tuple[list[float], list[float], int, dict[str, list[float]]]:
    """Per task: submit -> first output, submit -> finished; how many did not complete; and
    the phases of the first output's way (seconds each)."""
    first_output, finished, failures = [], [], 0
    phases: dict[str, list[float]] = {name: [] for name in PHASES}
    for _ in range(count):
        start = time.perf_counter()
        marks = {"submit": time.time()}
        task_id = await client.submit(ECHO_TASK)
        marks["submitted"] = time.time()
        seen_output = False
        state = task_pb2.TASK_STATE_UNSPECIFIED
        async with contextlib.aclosing(client.watch(task_id)) as events:
            async for event in events:
                kind = str(event.WhichOneof("event"))
                marks.setdefault(kind, event.time.ToNanoseconds() / 1e9)
                if kind == "output" and not seen_output:
                    first_output.append(time.perf_counter() - start)
                    marks["received"] = time.time()
                    seen_output = True
                elif kind == "finished":
                    state = event.finished.state
        finished.append(time.perf_counter() - start)
        if state != task_pb2.TASK_STATE_COMPLETED or not seen_output:
            failures += 1
            continue
        for name, (begin, end) in PHASES.items():
            phases[name].append(marks[end] - marks[begin])
    return first_output, finished, failures, phases


async def throughput(client: CorralClient, count: int) -> tuple[float, dict[str, int]]:
    """Submits `count` tasks at once; seconds until all finished, and their final states."""
    start = time.perf_counter()
    task_ids = await asyncio.gather(*(client.submit(ECHO_TASK) for _ in range(count)))
    tasks = await asyncio.gather(*(client.wait(task_id) for task_id in task_ids))
    elapsed = time.perf_counter() - start
    states: dict[str, int] = {}
    for task in tasks:
        name = TASK_STATE_NAMES.get(task.state, "unknown")
        states[name] = states.get(name, 0) + 1
    return elapsed, states


def bare_bwrap(runs: int) -> float | None:
    """Median seconds of a sandbox that does nothing: the floor under any task's latency."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "true"]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bare_docker_run(runs: int) -> float | None:
    """Median seconds of `docker run --rm IMAGE true`: a container per task would pay this."""
    if shutil.which("docker") is None:
        return None
    image = os.environ.get("CORRAL_DOCKER_IMAGE", "corral/sandbox:latest")
    argv = ["docker", "run", "--rm", "--network", "none", image, "true"]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextlib.contextmanager
def embedded_system(env: dict[str, str] | None = None) -> Iterator[tuple[str, Settings]]:
    """Runs `corral up` on free ports with a temporary data directory; yields the scheduler
    address and the settings that find its certificates."""
    data_dir = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    scheduler = f"127.0.0.1:{free_port()}"
    with corral_up_process(
        "corral-bench-", {**os.environ, **(env or {})}, ["--log-level", "warning"],
        data_dir=data_dir, scheduler_address=scheduler,
    ) as (url, _process):
        if (env or {}).get("CORRAL_AUTH") == "keys":
            # A tenant's key (not an admin's: its quotas are counted too), sent by CorralClient.
            made = subprocess.run(
                [sys.executable, "-m", "corral.cli", "keys", "create", "--name", "bench", "--database"],
                env={**os.environ, **(env or {}), "CORRAL_DATA_DIR": str(data_dir)},
                capture_output=True, text=True, check=True,
            )
            os.environ["CORRAL_API_KEY"] = made.stdout.strip()
        # The gateway, for the REST clients (the SDK reads CORRAL_URL).
        os.environ["CORRAL_URL"] = url
        yield scheduler, Settings(data_dir=data_dir)


async def measure(scheduler: str, settings: Settings, count: int, burst: int) -> None:
    async with CorralClient(scheduler, settings) as client:
        await client.wait(await client.submit(ECHO_TASK))  # warm-up: connections, caches
        first_output, finished, failures, phases = await latency(client, count)
        print(f"(a) submit -> first output, one-step `echo x`, {count} sequential tasks")
        if first_output:
            print(f"    p50 {ms(percentile(first_output, 0.50))}   p95 {ms(percentile(first_output, 0.95))}"
                  f"   min {ms(min(first_output))}   max {ms(max(first_output))}")
        print(f"    submit -> finished: p50 {ms(percentile(finished, 0.50))}"
              f"   p95 {ms(percentile(finished, 0.95))}   not completed: {failures}")
        print("    where the time to first output goes (p50 of each phase):")
        for name, values in phases.items():
            if values:
                print(f"      {name:<45} {ms(percentile(values, 0.50))}")
        elapsed, states = await throughput(client, burst)
        failed = burst - states.get("completed", 0)
        print(f"(b) {burst} one-step tasks submitted at once: all finished in {elapsed:.2f} s"
              f" -> {burst / elapsed:.1f} tasks/s; not completed: {failed} {states}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scheduler", help="a running scheduler (default: start `corral up` on free ports)")
    parser.add_argument("-n", "--count", type=int, default=50, help="sequential tasks for (a)")
    parser.add_argument("-b", "--burst", type=int, default=200, help="tasks submitted at once for (b)")
    parser.add_argument("--bwrap-runs", type=int, default=20)
    parser.add_argument("--driver", choices=["bubblewrap", "docker"], default="bubblewrap",
                        help="sandbox driver of the started system")
    parser.add_argument("--auth", choices=["off", "keys"], default="off",
                        help="keys: the started system requires API keys; the tasks go with a tenant's key")
    parser.add_argument("--warm-pool", type=int, default=None,
                        help="warm sandboxes kept ready (default: docker 0, bubblewrap CORRAL_BWRAP_WARM_POOL's)")
    args = parser.parse_args()

    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    bare = bare_bwrap(args.bwrap_runs)
    if bare is None:
        print("bare bwrap: bwrap not found")
    else:
        print(f"bare `bwrap --unshare-all ... true`: median {ms(bare)} over {args.bwrap_runs} runs")
    if args.driver == "docker":
        bare_run = bare_docker_run(max(3, args.bwrap_runs // 4))
        if bare_run is not None:
            print(f"bare `docker run --rm IMAGE true`: median {ms(bare_run)}")
    if args.scheduler:
        asyncio.run(measure(args.scheduler, Settings(), args.count, args.burst))
    else:
        env = {"CORRAL_SANDBOX_DRIVER": args.driver}
        if args.auth == "keys":
            # Quotas high enough for the burst: the figure is the key check's cost, not a 429.
            env.update(CORRAL_AUTH="keys", CORRAL_QUOTA_MAX_TASKS="100000",
                       CORRAL_QUOTA_SUBMISSIONS_PER_SECOND="100000")
        pool_var = "CORRAL_DOCKER_WARM_POOL" if args.driver == "docker" else "CORRAL_BWRAP_WARM_POOL"
        if args.warm_pool is not None or args.driver == "docker":
            env[pool_var] = str(args.warm_pool or 0)
        pool = env.get(pool_var) or os.environ.get(pool_var) or "default"
        print(f"system: `corral up` with the {args.driver} driver, warm pool {pool}, auth {args.auth}")
        with embedded_system(env) as (scheduler, settings):
            asyncio.run(measure(scheduler, settings, args.count, args.burst))


if __name__ == "__main__":
    main()
