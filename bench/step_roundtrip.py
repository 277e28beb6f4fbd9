#!/usr/bin/env python3
"""Step round trip per sandbox driver, and sandbox start, measured on the driver directly
(a benchmark, not a test).

    .venv/bin/python bench/step_roundtrip.py                      # bubblewrap and docker
    .venv/bin/python bench/step_roundtrip.py --drivers docker -n 500

For each driver: median / p95 time to create a sandbox (cold; and to claim one from a warm
pool), then, in one running sandbox, the round trip of
  - read_file of a small file (the agent's protocol alone: no process is started),
  - a `true` process step (protocol + fork/exec in the sandbox),
  - a `echo x` shell step.
Also what a sandbox's own filesystem costs (services/executor/task_fs.py; --no-disk-fs to run
without): making one (mkfs + mount) and releasing it (copy-out + unmount), at the default quota.
For comparison: bare `docker run --rm IMAGE true` and `docker exec CONTAINER true` times.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corral.config import Settings
from services.executor import task_fs
from services.executor.drivers.base import (
    ProcessRequest,
    Sandbox,
    SandboxConfig,
    SandboxDriver,
    SandboxLimits,
)
from services.executor.task_fs import TaskFilesystems


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))]


def line(label: str, values: list[float]) -> str:
    return (f"  {label:<34} p50 {statistics.median(values) * 1000:8.2f} ms   "
            f"p95 {percentile(values, 0.95) * 1000:8.2f} ms   (n={len(values)})")


async def timed(fn: Callable[[], Awaitable[object]], n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
    return times


def make_driver(name: str, settings: Settings) -> SandboxDriver:
    if name == "docker":
        from services.executor.drivers.docker import DockerDriver

        return DockerDriver(settings)
    from services.executor.drivers.bubblewrap import BubblewrapDriver

    return BubblewrapDriver(settings)


async def bench_driver(name: str, n: int, starts: int, data_dir: Path, disk_fs: bool) -> None:
    settings = Settings(
        data_dir=data_dir / name, sandbox_driver=name, docker_warm_pool=0, bwrap_warm_pool=0, sandbox_disk_fs=disk_fs
    )
    settings.tasks_dir.mkdir(parents=True, exist_ok=True)
    driver = make_driver(name, settings)
    filesystems = driver.task_fs = TaskFilesystems(settings, driver.disk_fs_blocker())
    await driver.start(f"bench-{os.getpid()}")
    limits = SandboxLimits.resolve(settings)
    counter = iter(range(10**9))

    def config(task_id: str = "") -> SandboxConfig:
        task_id = task_id or f"bench-{next(counter)}"
        path = settings.tasks_dir / task_id
        filesystems.attach(path, limits.disk_mb)
        driver.prepare_task_dir(path)
        return SandboxConfig(task_id=task_id, host_task_dir=path, limits=limits)

    async def close(sandbox: Sandbox) -> None:
        await sandbox.close()
        if await asyncio.to_thread(os.path.ismount, sandbox.config.host_task_dir):
            await asyncio.to_thread(task_fs.release, sandbox.config.host_task_dir)

    print(f"{name}: {filesystems.description}")
    try:
        if filesystems.enabled:
            made, released = [], []
            for _ in range(starts):
                start = time.perf_counter()
                path = config().host_task_dir
                made.append(time.perf_counter() - start)
                (path / "result.txt").write_text("x" * 1000)
                start = time.perf_counter()
                task_fs.release(path)
                released.append(time.perf_counter() - start)
            print(line(f"own filesystem: make ({limits.disk_mb} MiB)", made))
            print(line("own filesystem: copy out + unmount", released))

        async def cold() -> None:
            sandbox = await driver.create(config())
            await close(sandbox)

        print(line("create + close sandbox (cold)", await timed(cold, starts)))
        pool = getattr(driver, "pool", None)  # the docker and bubblewrap drivers have one
        if pool is not None:
            pool.size = 1
            pool.start()
            claims = []
            for _ in range(starts):
                while pool.ready_count < 1:  # noqa: ASYNC110 (polling a counter, fine in a bench)
                    await asyncio.sleep(0.05)
                start = time.perf_counter()
                task_id = f"bench-{next(counter)}"
                claimed = await driver.claim_warm(
                    SandboxConfig(task_id=task_id, host_task_dir=settings.tasks_dir / task_id, limits=limits)
                )
                claims.append(time.perf_counter() - start)
                assert claimed is not None
                await claimed.close()
            print(line("claim a sandbox from the warm pool", claims))
            await pool.stop()

        sandbox = await driver.create(config())
        try:
            await sandbox.write_file("small.txt", "x" * 100, 1 << 20)
            print(line("read_file (protocol only)", await timed(lambda: sandbox.read_file("small.txt", 1 << 20), n)))
            true = ProcessRequest(kind="argv", argv=("/bin/true",), timeout=30)
            print(line("process step `true`", await timed(lambda: sandbox.run(true, lambda s, d: None), n)))
            echo = ProcessRequest(kind="shell", code="echo x", timeout=30)
            print(line("shell step `echo x`", await timed(lambda: sandbox.run(echo, lambda s, d: None), n)))
        finally:
            await close(sandbox)
    finally:
        await driver.stop()
        filesystems.stop()


def bare_docker(image: str, runs: int) -> None:
    if shutil.which("docker") is None:
        return
    def run(argv: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start

    run(["docker", "run", "--rm", "--network", "none", image, "true"])  # warm-up
    runs_t = [run(["docker", "run", "--rm", "--network", "none", image, "true"]) for _ in range(runs)]
    name = f"corral-bench-exec-{os.getpid()}"
    subprocess.run(["docker", "run", "-d", "--rm", "--name", name, "--network", "none", image, "sleep", "600"],
                   check=True, stdout=subprocess.DEVNULL)
    try:
        execs = [run(["docker", "exec", name, "true"]) for _ in range(runs)]
    finally:
        subprocess.run(["docker", "rm", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print("bare docker (CLI):")
    print(line(f"docker run --rm {image} true", runs_t))
    print(line("docker exec CONTAINER true", execs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drivers", default="bubblewrap,docker")
    parser.add_argument("-n", type=int, default=200, help="round trips per measure")
    parser.add_argument("--starts", type=int, default=10, help="sandbox starts per measure")
    parser.add_argument("--no-disk-fs", action="store_true", help="no per-sandbox filesystems (measured quota)")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        Path(tmp).chmod(0o755)
        for name in args.drivers.split(","):
            asyncio.run(bench_driver(name, args.n, args.starts, Path(tmp), not args.no_disk_fs))
    if "docker" in args.drivers:
        bare_docker(Settings().docker_image, args.starts)


if __name__ == "__main__":
    main()
