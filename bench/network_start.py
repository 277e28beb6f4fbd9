#!/usr/bin/env python3
"""What network costs a bubblewrap sandbox's start (a benchmark, not a test).

    PYTHONPATH=. .venv/bin/python bench/network_start.py [-n 20]

Creates -n cold sandboxes without network and -n with it (each closed before the next), on the
driver directly, and prints the median and p95 time to create (and to close) each kind. A
networked start adds the sandbox's own namespace, its nftables ruleset, the resolver's sockets
and pasta (services/executor/network/bwrap_net.py). Needs root; sends no packet anywhere (no
step runs; the resolver's upstream is a closed loopback port).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corral.config import Settings
from services.executor.drivers.base import SandboxConfig, SandboxLimits
from services.executor.drivers.bubblewrap import BubblewrapDriver


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"{name:<24} median {statistics.median(ms):7.1f} ms   p95 {p95:7.1f} ms   (n={len(ms)})"


async def measure(driver: BubblewrapDriver, network: bool, n: int) -> tuple[list[float], list[float]]:
    starts, closes = [], []
    for i in range(n + 1):  # the first is a warm-up, not counted
        task_id = f"bench-{'net' if network else 'off'}-{i}-{os.urandom(3).hex()}"
        task_dir = driver.settings.tasks_dir / task_id
        driver.prepare_task_dir(task_dir)
        config = SandboxConfig(
            task_id=task_id, host_task_dir=task_dir, limits=SandboxLimits.resolve(driver.settings), network=network
        )
        t0 = time.perf_counter()
        sandbox = await driver.create(config)
        t1 = time.perf_counter()
        await sandbox.close()
        t2 = time.perf_counter()
        if i:
            starts.append(t1 - t0)
            closes.append(t2 - t1)
    return starts, closes


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("network_start.py needs root (the executor makes each sandbox's network namespace)")
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), bwrap_warm_pool=0, sandbox_dns_upstream="127.0.0.1:9")
        driver = BubblewrapDriver(settings)
        await driver.start(f"bench-{os.urandom(4).hex()}")
        if driver.network_blocker:
            sys.exit(f"no sandbox network here: {driver.network_blocker}")
        try:
            offline = await measure(driver, False, args.n)
            networked = await measure(driver, True, args.n)
        finally:
            await driver.stop()
    print(summary("start, offline", offline[0]))
    print(summary("start, with network", networked[0]))
    print(summary("close, offline", offline[1]))
    print(summary("close, with network", networked[1]))
    extra = statistics.median(networked[0]) - statistics.median(offline[0])
    print(f"network adds {extra * 1000:.1f} ms to a start (medians)")


if __name__ == "__main__":
    asyncio.run(main())
