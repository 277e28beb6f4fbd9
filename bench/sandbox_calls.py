#!/usr/bin/env python3
"""REST round trips of a long-lived sandbox's interactive calls (a benchmark, not a test).

    .venv/bin/python bench/sandbox_calls.py                  # starts `corral up` on free ports
    .venv/bin/python bench/sandbox_calls.py --driver docker  # docker sandboxes (scripts/build-images)
    .venv/bin/python bench/sandbox_calls.py --url http://127.0.0.1:8080   # a running gateway

In one idle sandbox, over one keep-alive HTTP connection, p50 / p95 of:
  - POST /v1/sandboxes/{id}/commands {"tool": "shell", "command": "true"} (the target: p50 <= 10 ms),
    and of that, the command's own duration as the executor measured it (agent + fork/exec);
  - GET  /v1/sandboxes/{id}/files/stat (the whole chain, no process started);
  - GET  /v1/sandboxes/{id}/files of a 1 MiB file.
Beside SWE-ReX's execute round trip on the same kind of machine (5.9 ms, quoted in issue 12).
With `corral up` started here, also the CPU each process spent per `true` (this client, the
gateway, scheduler, executor, memory, the sandbox's agent with the command it ran): on a busy
machine the round trip mostly waits for a core, and this says where the work itself goes.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator

import httpx
from corral_up import corral_up

TARGET_MS = 10.0
SWE_REX_MS = 5.9


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))]


def report(label: str, values: list[float]) -> float:
    p50, p95 = percentile(values, 0.5) * 1000, percentile(values, 0.95) * 1000
    print(f"  {label:<48} p50 {p50:7.2f} ms   p95 {p95:7.2f} ms   (n={len(values)})")
    return p50


SERVICES = ("-m gateway", "-m services.scheduler", "-m services.executor", "-m services.memory", "agent.py")


def processes_cpu() -> dict[str, float]:
    """CPU seconds (with reaped children's) of this process's descendants, by service."""
    tick = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    pending, seen = [os.getpid()], set()
    while pending:
        pid = pending.pop()
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                pending += [int(child) for child in f.read().split() if int(child) not in seen]
            with open(f"/proc/{pid}/cmdline") as f:
                command = f.read().replace("\0", " ")
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            continue
        name = next((s.removeprefix("-m ").removeprefix("services.") for s in SERVICES if s in command), None)
        if name is not None:
            totals[name] = totals.get(name, 0.0) + sum(int(x) for x in fields[11:15]) / tick
    return totals


def cpu_per_call(call: Callable[[], object], n: int) -> str:
    before, client = processes_cpu(), time.process_time()
    for _ in range(n):
        call()
    spent = {"client": time.process_time() - client}
    for name, seconds in processes_cpu().items():
        spent[name] = seconds - before.get(name, 0.0)
    total = sum(spent.values()) / n * 1000
    return f"CPU per call {total:.2f} ms: " + ", ".join(
        f"{name} {seconds / n * 1000:.2f}" for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1])
    )


def timed(call: Callable[[], object], n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


@contextlib.contextmanager
def embedded_system(driver: str) -> Iterator[str]:
    """`corral up` on free ports with a temporary data directory; yields the gateway's URL."""
    with corral_up("corral-bench-calls-", {**os.environ, "CORRAL_SANDBOX_DRIVER": driver},
                   ["--log-level", "warning"]) as url:
        yield url


def measure(url: str, count: int, embedded: bool = False) -> tuple[float, float]:
    """Prints the round trips (with `embedded`, the CPU of each of its processes per `true` too);
    returns the p50s (ms) of `true`'s and of its own duration."""
    headers = {"authorization": f"Bearer {os.environ['CORRAL_API_KEY']}"} if os.environ.get("CORRAL_API_KEY") else {}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        created = client.post("/v1/sandboxes", json={"ttl": 600})
        created.raise_for_status()
        sandbox = f"/v1/sandboxes/{created.json()['sandbox_id']}"
        try:
            client.put(f"{sandbox}/files", params={"path": "one-mib.bin"}, content=os.urandom(1024 * 1024),
                       headers={"content-type": "application/octet-stream"}).raise_for_status()
            durations: list[float] = []

            def true() -> None:
                reply = client.post(f"{sandbox}/commands", json={"tool": "shell", "command": "true"})
                reply.raise_for_status()
                durations.append(reply.json()["duration"])

            def stat() -> None:
                client.get(f"{sandbox}/files/stat", params={"path": "one-mib.bin"}).raise_for_status()

            def read() -> None:
                reply = client.get(f"{sandbox}/files", params={"path": "one-mib.bin"})
                reply.raise_for_status()
                assert len(reply.content) == 1024 * 1024

            for call in (true, stat, read):
                timed(call, 10)  # warm-up: connections, caches, the agent's first spawn
            durations.clear()
            print(f"in one idle sandbox, {count} sequential calls each:")
            p50 = report('POST .../commands {"command": "true"}', timed(true, count))
            own = report("  of which the command itself (executor's duration)", durations)
            report("GET .../files/stat (no process)", timed(stat, count))
            report("GET .../files (1 MiB)", timed(read, max(10, count // 4)))
            if embedded:
                print(f"  `true`, {cpu_per_call(true, count)} (load average {os.getloadavg()[0]:.1f})")
            verdict = "meets" if p50 <= TARGET_MS else "misses"
            print(f"target: p50 <= {TARGET_MS:g} ms for `true` -> {verdict} it ({p50:.2f} ms); "
                  f"SWE-ReX's execute round trip: {SWE_REX_MS} ms")
            return p50, own
        finally:
            client.delete(sandbox)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running gateway (default: start `corral up` on free ports)")
    parser.add_argument("-n", "--count", type=int, default=200)
    parser.add_argument("--driver", choices=["bubblewrap", "docker"], default="bubblewrap")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    if args.url:
        measure(args.url, args.count)
        return
    print(f"system: `corral up` with the {args.driver} driver")
    with embedded_system(args.driver) as url:
        measure(url, args.count, embedded=True)


if __name__ == "__main__":
    main()
