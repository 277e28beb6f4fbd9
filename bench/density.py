#!/usr/bin/env python3
"""Density: how many idle headless long-lived sandboxes fit in 24 GiB (a benchmark, not a
test): issue 13's row "idle headless sandboxes in 24 GiB (PSS + kernel), target >= 10,000".

    .venv/bin/python bench/density.py              # 100 sandboxes, bubblewrap, `corral up`
    .venv/bin/python bench/density.py -n 200

Starts `corral up` (bubblewrap, no warm pool) on free ports, creates N long-lived sandboxes
through the REST API (POST /v1/sandboxes, as `corral sandbox create` does), lets them idle, and
counts what each costs:
  PSS      of every process in each sandbox's cgroup (/proc/PID/smaps_rollup), by program, so
           the agent's part shows apart from bwrap's
  kernel   each sandbox cgroup's own kernel memory (v2 memory.stat kernel; v1 memory.kmem.usage)
  host     what holding N sandboxes added outside them: the services' own PSS (the executor's
           state per sandbox) and the machine's unreclaimable slab and page tables (loop devices,
           ext4 mounts, namespaces), from /proc/meminfo before and after
and extrapolates 24 GiB / (PSS + kernel + host) against the 10,000 target. MemAvailable's
drop is printed beside it as a cross-check (noisy on a shared machine: other processes move it).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_startup import child_env
from corral_up import corral_up_process

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET = 10_000
BUDGET_BYTES = 24 * 1024**3
KIB = 1024
MAX_SANDBOXES = 1000  # bounded: each holds processes, a cgroup and maybe a loop device
SANDBOX_CGROUP = "/sandbox-"  # services/executor/cgroups.py SANDBOX_PREFIX, under corral-<executor>
# /proc/meminfo lines that grow with kernel objects a sandbox holds outside its cgroup's count.
KERNEL_FIELDS = ("SUnreclaim", "KernelStack", "PageTables")


@dataclass
class Density:
    """What N idle sandboxes cost, per sandbox, in bytes."""

    count: int
    pss: float
    kernel: float
    services: float
    host_kernel: float
    mem_available: float
    # Page cache and buffers the sandboxes added (reclaimable: not counted in per_sandbox).
    cache: float
    processes: float
    by_program: dict[str, float] = field(default_factory=dict)
    filesystems: int = 0
    # Page cache of the filesystems' image files, per filesystem (fincore; -1: not measured).
    image_cache: float = -1

    @property
    def per_sandbox(self) -> float:
        return self.pss + self.kernel + self.services + self.host_kernel

    @property
    def fits(self) -> int:
        return int(BUDGET_BYTES / self.per_sandbox) if self.per_sandbox > 0 else 0


def meminfo() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0]) * KIB
    return fields


def pss_of(pid: int) -> int:
    """The process's proportional set size (0 when it is gone or unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * KIB
    except (OSError, ValueError):
        pass
    return 0


def program_of(pid: int) -> str:
    """What the process runs, shortly: 'bwrap', 'python3 agent.py'..."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [os.path.basename(a.decode(errors="replace")) for a in argv if a][:2]
    if words and words[0].startswith("python"):
        return " ".join(words)
    return words[0] if words else "?"


def memory_cgroup(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers in ("memory", "") and SANDBOX_CGROUP in path:
                return path
    except OSError:
        pass
    return ""


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rfind(")") + 2 :].split()[1]), []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def cgroup_kernel_bytes(path: str) -> int:
    """The cgroup's own kernel memory (slab, stacks, page tables charged to it)."""
    v2 = Path("/sys/fs/cgroup") / path.lstrip("/")
    if (v2 / "memory.stat").exists() and not Path("/sys/fs/cgroup/memory").is_dir():
        for line in (v2 / "memory.stat").read_text().splitlines():
            if line.startswith("kernel "):
                return int(line.split()[1])
        return 0
    kmem = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.kmem.usage_in_bytes"
    try:
        return int(kmem.read_text())
    except (OSError, ValueError):
        return 0


def loop_mounts(under: str) -> int:
    """Loop-mounted filesystems (the sandboxes' own, task_fs.py) at a path holding `under`."""
    return sum(1 for line in Path("/proc/mounts").read_text().splitlines()
               if line.startswith("/dev/loop") and under in line.split()[1])


def image_cache_bytes() -> tuple[int, int]:
    """The page cache the sandboxes' filesystem images hold (task_fs.py: data_dir/disks), and
    how many images; (-1, n) without fincore."""
    images = glob.glob("/tmp/corral-bench-density-*/disks/*.img")
    if not images or shutil.which("fincore") is None:
        return -1, len(images)
    done = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", *images],
                          capture_output=True, text=True)
    return sum(int(word) for word in done.stdout.split() if word.isdigit()), len(images)


def snapshot(root: int) -> tuple[dict[str, int], int, dict[str, list[int]]]:
    """meminfo, the services' PSS (every process of `corral up` not in a sandbox) and the
    sandboxes' processes by cgroup."""
    sandboxes: dict[str, list[int]] = {}
    services = 0
    for pid in descendants(root):
        group = memory_cgroup(pid)
        if group:
            sandboxes.setdefault(group, []).append(pid)
        else:
            services += pss_of(pid)
    return meminfo(), services, sandboxes


def settle(seconds: float = 3.0) -> None:
    """Idle: the sandboxes' start-up work done, the kernel's deferred frees (RCU) through."""
    time.sleep(seconds)


def measure(url: str, root: int, count: int) -> Density:
    from corral.sdk.sync import Client, Sandbox

    settle()
    before, services_before, _ = snapshot(root)
    with Client(url) as client:
        def create(_: int) -> Sandbox:
            return Sandbox.create(ttl=3600, client=client)

        with ThreadPoolExecutor(2) as pool:  # two at a time: the executor starts them in parallel
            sandboxes = list(pool.map(create, range(count)))
        try:
            settle()
            after, services_after, groups = snapshot(root)
            filesystems = loop_mounts("corral-bench-density-")
            cached, images = image_cache_bytes()
            pss_total, kernel_total, processes = 0, 0, 0
            by_program: Counter[str] = Counter()
            for group, pids in groups.items():
                kernel_total += cgroup_kernel_bytes(group)
                for pid in pids:
                    pss = pss_of(pid)
                    pss_total += pss
                    by_program[program_of(pid)] += pss
                    processes += 1
            n = max(1, len(groups))
            host_kernel = sum(after[f] - before[f] for f in KERNEL_FIELDS) - kernel_total
            return Density(
                count=len(groups),
                pss=pss_total / n,
                kernel=kernel_total / n,
                services=max(0, services_after - services_before) / n,
                host_kernel=max(0, host_kernel) / n,
                mem_available=(before["MemAvailable"] - after["MemAvailable"]) / n,
                cache=sum(after[f] - before[f] for f in ("Cached", "Buffers")) / n,
                processes=processes / n,
                by_program={name: value / n for name, value in by_program.most_common()},
                filesystems=filesystems,
                image_cache=cached / images if cached >= 0 and images else -1,
            )
        finally:
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda sandbox: sandbox.kill(), sandboxes))


def density_env(count: int) -> dict[str, str]:
    env = child_env()
    env.update({
        "CORRAL_SANDBOX_DRIVER": "bubblewrap",
        "CORRAL_BWRAP_WARM_POOL": "0",  # only the long-lived sandboxes are counted
        "CORRAL_QUOTA_MAX_SANDBOXES": str(count),
        "CORRAL_EXECUTOR_MAX_SANDBOXES": str(count),
        "CORRAL_QUOTA_SUBMISSIONS_PER_SECOND": "1000",
    })
    return env


def run_density(count: int = 100) -> Density:
    """`corral up`, N idle sandboxes, their cost; everything torn down after."""
    if not 1 <= count <= MAX_SANDBOXES:
        raise SystemExit(f"-n must be 1 to {MAX_SANDBOXES}, not {count}")
    with corral_up_process("corral-bench-density-", density_env(count), cwd=REPO) as (url, process):
        return measure(url, process.pid, count)


def mib(value: float) -> str:
    return f"{value / 1024**2:.2f} MiB"


def report(result: Density) -> None:
    print(f"density: {result.count} idle headless long-lived sandboxes (bubblewrap), "
          f"{result.processes:.1f} processes each, {result.filesystems} with a filesystem of their own")
    print(f"  PSS of the sandbox's processes   {mib(result.pss):>12}")
    for name, value in result.by_program.items():
        print(f"    {name:<30} {mib(value):>12}")
    print(f"  kernel, charged to its cgroup    {mib(result.kernel):>12}")
    print(f"  kernel, outside it (slab...)     {mib(result.host_kernel):>12}")
    print(f"  services' own growth             {mib(result.services):>12}")
    if result.image_cache >= 0:
        print(f"  (page cache of a filesystem's image, reclaimable, not counted: {mib(result.image_cache)})")
    print(f"  per sandbox                      {mib(result.per_sandbox):>12}   "
          f"(MemAvailable's drop per sandbox: {mib(result.mem_available)}; page cache and "
          f"buffers added, reclaimable, not counted: {mib(result.cache)})")
    ratio = result.fits / TARGET
    print(f"  fit in 24 GiB: {result.fits:,}   target {TARGET:,}: {ratio:.2f}x "
          f"({'met' if result.fits >= TARGET else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--count", type=int, default=100, help=f"sandboxes (at most {MAX_SANDBOXES})")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    report(run_density(args.count))


if __name__ == "__main__":
    main()
