#!/usr/bin/env python3
"""The step agent's cost, Python vs compiled (CORRAL_SANDBOX_AGENT), under the bubblewrap driver
with Corral's exact command line (a benchmark, not a test).

    .venv/bin/python bench/agent_start.py            # 40 rounds
    .venv/bin/python bench/agent_start.py -n 100

Each round, for each agent in turn (alternation: the machine's load falls on both alike): a
sandbox created, one `true` step, closed. Measured per sandbox: wall time, and the CPU of the
sandbox's processes (bwrap, the agent, the step: this process's cgroup, less this process) apart
from the executor side's own (this process). Then the idle agent's memory: PSS (/proc/PID/smaps_rollup)
of the agent process, and of all the sandbox's processes, over a few idle sandboxes each.
Per-sandbox filesystems are off (their mkfs is not the agent's cost).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from targets import join_cpu_cgroup, system_cpu

from corral.config import Settings
from services.executor.drivers.base import ProcessRequest, SandboxConfig, SandboxLimits
from services.executor.drivers.bubblewrap import BubblewrapDriver

AGENTS = ("python", "compiled")
TRUE = ProcessRequest(kind="argv", argv=("/bin/true",), timeout=30)


CGROUP: Path | None = None


def cpu() -> tuple[float, float]:
    """(this process's CPU, that of this process and everything it started: its cgroup's)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime, system_cpu(CGROUP)


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                parents[int(name)] = int(Path(f"/proc/{name}/stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, grew = {root}, True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return sorted(found)


def is_agent(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return argv[0] in (b"/usr/bin/python3", b"/app/corral-agent") and b"/app/agent.py" in argv


def main(rounds: int, idle: int) -> None:
    global CGROUP
    CGROUP = join_cpu_cgroup()
    if CGROUP is None:
        sys.exit("agent_start: needs a cgroup of its own for the sandboxes' CPU (run as root)")
    with tempfile.TemporaryDirectory(prefix="corral-bench-agent-") as tmp:
        Path(tmp).chmod(0o755)
        asyncio.run(measure(tmp, rounds, idle))


async def measure(tmp: str, rounds: int, idle: int) -> None:
    drivers = {}
    for agent in AGENTS:
        settings = Settings(
            data_dir=Path(tmp) / agent, sandbox_agent=agent, bwrap_warm_pool=0, sandbox_disk_fs=False
        )
        settings.tasks_dir.mkdir(parents=True, exist_ok=True)
        driver = BubblewrapDriver(settings)
        await driver.start(f"bench-{agent}-{os.getpid()}")
        drivers[agent] = (driver, settings, SandboxLimits.resolve(settings))
    counter = iter(range(10**9))

    def config(agent: str) -> SandboxConfig:
        driver, settings, limits = drivers[agent]
        path = settings.tasks_dir / f"t{next(counter)}"
        path.mkdir()
        driver.prepare_task_dir(path)
        return SandboxConfig(task_id=path.name, host_task_dir=path, limits=limits)

    wall: dict[str, list[float]] = {a: [] for a in AGENTS}
    sandbox_cpu: dict[str, list[float]] = {a: [] for a in AGENTS}
    executor_cpu: dict[str, list[float]] = {a: [] for a in AGENTS}
    for round_no in range(rounds + 1):
        for agent in AGENTS if round_no % 2 else reversed(AGENTS):
            own0, all0 = cpu()
            start = time.perf_counter()
            sandbox = await drivers[agent][0].create(config(agent))
            await sandbox.run(TRUE, lambda s, d: None)
            await sandbox.close()
            elapsed = time.perf_counter() - start
            own1, all1 = cpu()
            if round_no:  # the first round warms caches
                wall[agent].append(elapsed)
                sandbox_cpu[agent].append((all1 - all0) - (own1 - own0))
                executor_cpu[agent].append(own1 - own0)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; {rounds} rounds in alternation")
    print(f"{'agent':<10}{'wall p50':>10}{'sandboxes/s':>13}{'sandbox CPU':>13}{'executor CPU':>14}{'total CPU':>11}")
    for agent in AGENTS:
        w, s, e = (statistics.median(v) * 1000 for v in (wall[agent], sandbox_cpu[agent], executor_cpu[agent]))
        total = statistics.median([a + b for a, b in zip(sandbox_cpu[agent], executor_cpu[agent], strict=True)]) * 1000
        print(f"{agent:<10}{w:>8.1f}ms{1000 / w:>13.1f}{s:>11.1f}ms{e:>12.1f}ms{total:>9.1f}ms")
    ratio = statistics.median(sandbox_cpu["python"]) / max(statistics.median(sandbox_cpu["compiled"]), 1e-9)
    print(f"sandbox CPU, python / compiled: {ratio:.1f}x")

    print(f"idle PSS (KiB, median of {idle} sandboxes each, one `true` step run):")
    for agent in AGENTS:
        held = []
        for _ in range(idle):
            sandbox = await drivers[agent][0].create(config(agent))
            await sandbox.run(TRUE, lambda s, d: None)
            held.append(sandbox)
        await asyncio.sleep(0.5)
        agent_pss, tree_pss = [], []
        for sandbox in held:
            process = getattr(sandbox.transport, "process", None)  # bwrap
            pids = descendants(process.pid) if process is not None else []
            agent_pss.append(sum(pss_kib(p) for p in pids if is_agent(p)))
            tree_pss.append(sum(pss_kib(p) for p in pids))
        for sandbox in held:
            await sandbox.close()
        print(f"  {agent:<10} agent {statistics.median(agent_pss):>7.0f}   all the sandbox's processes {statistics.median(tree_pss):>7.0f}")
    for driver, _, _ in drivers.values():
        await driver.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=40, help="rounds (one sandbox per agent each)")
    parser.add_argument("--idle", type=int, default=5, help="idle sandboxes per agent for PSS")
    args = parser.parse_args()
    main(args.n, args.idle)
