"""GUI latency: screenshots (1024x768 PNG) and action round trips through the gui service.

Starts one sandbox with a desktop (as the executor does), then calls its gui service over the
unix socket from the host, as the executor does for GUI steps.

    .venv/bin/python bench/gui_latency.py [--n 100] [--driver bubblewrap|docker]

--driver docker needs a Docker engine and the sandbox image (scripts/build-images).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corral.config import Settings
from corral.v1 import gui_pb2
from services.executor.desktop import start_desktop
from services.executor.drivers.base import SandboxConfig, SandboxDriver, SandboxLimits
from services.executor.drivers.bubblewrap import BubblewrapDriver
from services.executor.gui_client import GuiClient


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def measure(name: str, n: int, call: Callable[[], Awaitable[Any]]) -> None:
    await call()  # warm-up
    times = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        times.append((time.perf_counter() - start) * 1000)
    print(
        f"{name:<34} n={n:<4} p50={statistics.median(times):7.2f} ms  "
        f"p95={percentile(times, 95):7.2f} ms  max={max(times):7.2f} ms"
    )


async def main(n: int, root: Path, driver_name: str) -> None:
    settings = Settings(data_dir=root, sandbox_run_dir=root / "run")
    driver: SandboxDriver
    if driver_name == "docker":
        from services.executor.drivers.docker import DockerDriver

        driver = DockerDriver(settings)
    else:
        driver = BubblewrapDriver(settings)
    await driver.start(f"bench-{root.name}")
    print(f"driver: {driver.name}")
    task_dir, run_dir = root / "tasks" / "bench", root / "run" / "bench"
    driver.prepare_task_dir(task_dir)
    driver.prepare_run_dir(run_dir)
    limits = SandboxLimits.resolve(settings)
    started = time.perf_counter()
    sandbox = await driver.create(
        SandboxConfig(task_id="bench", host_task_dir=task_dir, limits=limits, desktop=True, host_run_dir=run_dir)
    )
    desktop = await start_desktop(sandbox, run_dir)
    print(f"{'sandbox + desktop start':<34} {(time.perf_counter() - started) * 1000:.0f} ms")
    client = GuiClient(desktop.gui_socket)
    stub = client.stub
    try:
        shot = await stub.Screenshot(gui_pb2.ScreenshotRequest())
        print(f"screenshot size: {shot.width}x{shot.height}, {len(shot.png)} bytes PNG (bare desktop)")
        await measure("screenshot 1024x768 PNG", n, lambda: stub.Screenshot(gui_pb2.ScreenshotRequest()))
        await measure(
            "screenshot downscaled to 512 wide", n,
            lambda: stub.Screenshot(gui_pb2.ScreenshotRequest(max_width=512)),
        )
        await measure("move mouse", n, lambda: stub.MoveMouse(gui_pb2.MoveMouseRequest(x=300, y=200)))
        await measure("click", n, lambda: stub.Click(gui_pb2.ClickRequest(x=500, y=400)))
        await measure("press key", n, lambda: stub.PressKey(gui_pb2.PressKeyRequest(keys="shift")))
        await measure("cursor position (query only)", n, lambda: stub.CursorPosition(gui_pb2.CursorPositionRequest()))
        await measure("list windows", n, lambda: stub.ListWindows(gui_pb2.ListWindowsRequest()))
    finally:
        await client.close()
        await sandbox.close()
        await driver.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--driver", choices=("bubblewrap", "docker"), default="bubblewrap")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cb-", dir="/tmp"))  # short: socket paths are limited
    work.chmod(0o755)
    asyncio.run(main(args.n, work, args.driver))
