#!/usr/bin/env python3
"""The docker driver on runc and on gVisor (runsc), offline and with network (a benchmark, not
a test).

    .venv/bin/python bench/docker_runtime.py                 # runc and runsc, n=10 starts
    .venv/bin/python bench/docker_runtime.py --runtimes runc -n 20 --steps 200

For each runtime: median / p95 of
  - create -> first step done: DockerDriver.create (container created, started, agent ready)
    plus one `true` step, for a sandbox without network and for one on Corral's network (its
    address put under the host's nftables rules, DNS on the gateway);
  - the round trip of a `true` process step in a running sandbox.
Needs root, Docker, the sandbox image and (for runsc) scripts/install-gvisor.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corral.config import Settings
from services.executor.drivers.base import ProcessRequest, Sandbox, SandboxConfig, SandboxLimits
from services.executor.drivers.docker import DockerDriver

TRUE = ProcessRequest(kind="argv", timeout=30, argv=("true",))


def line(label: str, values: list[float]) -> str:
    p95 = sorted(values)[max(0, round(0.95 * len(values)) - 1)]
    return f"  {label:<34} p50 {statistics.median(values) * 1000:8.2f} ms   p95 {p95 * 1000:8.2f} ms   (n={len(values)})"


async def first_step(driver: DockerDriver, root: Path, n: int, network: bool) -> tuple[list[float], Sandbox]:
    """Times create + one step n times; returns the times and a last sandbox left running."""
    times: list[float] = []
    sandbox: Sandbox | None = None
    for i in range(n):
        if sandbox is not None:
            await sandbox.close()
        task_dir = root / f"t-{network}-{i}"
        driver.prepare_task_dir(task_dir)
        config = SandboxConfig(
            task_id=task_dir.name, host_task_dir=task_dir, limits=SandboxLimits.resolve(driver.settings),
            network=network,
        )
        start = time.perf_counter()
        sandbox = await driver.create(config)
        result = await sandbox.run(TRUE, lambda s, t: None)
        times.append(time.perf_counter() - start)
        assert result.exit_code == 0, result
    assert sandbox is not None
    return times, sandbox


async def bench(runtime: str, n: int, steps: int) -> None:
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        settings = Settings(
            data_dir=Path(tmp), sandbox_driver="docker", docker_runtime="" if runtime == "runc" else runtime,
        )
        settings.tasks_dir.mkdir(parents=True)
        driver = DockerDriver(settings)
        await driver.start(f"bench-{runtime}")
        try:
            print(f"{runtime}:")
            offline, sandbox = await first_step(driver, settings.tasks_dir, n, network=False)
            print(line("create -> first step, offline", offline))
            round_trips = []
            for _ in range(steps):
                start = time.perf_counter()
                await sandbox.run(TRUE, lambda s, t: None)
                round_trips.append(time.perf_counter() - start)
            await sandbox.close()
            print(line("step round trip (true)", round_trips))
            if driver.network.blocker:
                print(f"  networked: not measured ({driver.network.blocker})")
                return
            networked, sandbox = await first_step(driver, settings.tasks_dir, n, network=True)
            await sandbox.close()
            print(line("create -> first step, networked", networked))
            cost = statistics.median(networked) - statistics.median(offline)
            print(f"  {'network cost (median difference)':<34} {cost * 1000:8.2f} ms")
        finally:
            await driver.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtimes", default="runc,runsc")
    parser.add_argument("-n", type=int, default=10, help="sandbox starts per case")
    parser.add_argument("--steps", type=int, default=100, help="step round trips")
    args = parser.parse_args()
    for runtime in args.runtimes.split(","):
        await bench(runtime, args.n, args.steps)


if __name__ == "__main__":
    asyncio.run(main())
