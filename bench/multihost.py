#!/usr/bin/env python3
"""Burst throughput of one-step `true` tasks with 1, 2 and 4 executor hosts on this machine,
and the CPU each task costs (a benchmark, not a test: it prints, it does not assert).

    PYTHONPATH=$PWD .venv/bin/python bench/multihost.py                  # as root
    PYTHONPATH=$PWD .venv/bin/python bench/multihost.py -n 200 --rounds 5 --capacity 4
    PYTHONPATH=$PWD .venv/bin/python bench/multihost.py --total 16   # same capacity, split over hosts

The hosts are network namespaces with an address each (tests/hostlab.py), their executors
(bubblewrap) reached over mTLS from the scheduler and memory on the control host. Each host
has the same capacity, so adding hosts adds capacity; but the CPU is this machine's, shared,
so the scaling factor (throughput over one host's) says what the extra hosts cost rather than
what separate machines would give, and CPU per task -- every process of the system, sandboxes
included, from a cgroup of the bench's own (bench/targets.py), less the client's -- must stay
flat as hosts are added. Rounds alternate 1, 2, 4 hosts so drifts of the machine's load hit
each alike; each figure is the median over rounds, printed beside the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from hostlab import HostLab, host_lab, unavailable  # noqa: E402
from targets import join_cpu_cgroup, system_cpu  # noqa: E402

from corral.client import CorralClient  # noqa: E402
from corral.internal.v1 import registry_pb2, registry_pb2_grpc  # noqa: E402
from corral.schema import TaskRequest  # noqa: E402
from corral.v1 import task_pb2  # noqa: E402

TRUE_TASK = TaskRequest.model_validate({"steps": [{"tool": "shell", "command": "true"}]})
HOST_COUNTS = (1, 2, 4)


def alive(lab: HostLab) -> set[str]:
    with lab.cluster.channel(lab.cluster.scheduler_address) as channel:
        stub = registry_pb2_grpc.ExecutorRegistryServiceStub(channel)
        return {e.executor_id for e in stub.ListExecutors(registry_pb2.ListExecutorsRequest(), timeout=10).executors
                if e.alive}


def use_hosts(lab: HostLab, count: int, capacity: int | None = None) -> None:
    """Exactly hosts 1..count run an executor, each registered (the others stopped, gone);
    with `capacity`, all of them started anew with that many tasks at once."""
    for n in sorted(lab.executors):
        if n > count or capacity is not None:
            lab.stop_executor(n)
    starting = [n for n in range(1, count + 1) if n not in lab.executors]
    env = {} if capacity is None else {"CORRAL_EXECUTOR_CAPACITY": str(capacity)}
    for n in starting:
        lab.start_executor(n, wait=False, **env)
    lab.wait_serving(*starting)
    wanted = {lab.executor_id(n) for n in range(1, count + 1)}
    deadline = time.monotonic() + 60
    while alive(lab) != wanted:
        if time.monotonic() > deadline:
            raise SystemExit(f"the scheduler never listed exactly {sorted(wanted)} (it has {sorted(alive(lab))})")
        time.sleep(0.2)


async def burst(client: CorralClient, count: int, cgroup: Path | None) -> tuple[float, float, int]:
    """`count` tasks at once: tasks/s, CPU seconds of the whole system per task, not completed."""
    own_before = time.process_time()
    before = system_cpu(cgroup)
    start = time.perf_counter()
    task_ids = await asyncio.gather(*(client.submit(TRUE_TASK) for _ in range(count)))
    tasks = await asyncio.gather(*(client.wait(task_id) for task_id in task_ids))
    elapsed = time.perf_counter() - start
    await asyncio.sleep(1.0)  # the last sandboxes' teardown and the warm pools' refill
    system = system_cpu(cgroup) - before - (time.process_time() - own_before)
    failed = sum(task.state != task_pb2.TASK_STATE_COMPLETED for task in tasks)
    return count / elapsed, system / count, failed


async def rounds(
    lab: HostLab, args: argparse.Namespace, cgroup: Path | None, figures: dict[int, list[tuple[float, float, int]]]
) -> None:
    client = CorralClient(lab.cluster.scheduler_address, lab.cluster.settings())
    for round_number in range(1, args.rounds + 1):
        for hosts in HOST_COUNTS:
            # --total: the same capacity however many hosts share it (what a host costs, alone).
            per_host = args.total // hosts if args.total else None
            await asyncio.to_thread(use_hosts, lab, hosts, per_host)
            await burst(client, 4 * hosts, cgroup)  # warm-up: pools filled, channels open
            rate, cpu, failed = await burst(client, args.n, cgroup)
            figures[hosts].append((rate, cpu, failed))
            print(f"round {round_number}, {hosts} host(s): {rate:6.1f} tasks/s, CPU {cpu * 1000:5.1f} ms/task, "
                  f"{failed} not completed (load {os.getloadavg()[0]:.1f})", flush=True)
    await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=120, help="tasks per burst (default 120)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of 1, 2, 4 hosts (default 3)")
    parser.add_argument("--capacity", type=int, default=4, help="tasks each host runs at once (default 4)")
    parser.add_argument("--total", type=int, default=0,
                        help="instead: this many tasks at once over all hosts (e.g. 16: 16, 8+8, 4x4)")
    args = parser.parse_args()
    reason = unavailable()
    if reason:
        raise SystemExit(f"bench/multihost.py: {reason}")
    cgroup = join_cpu_cgroup()  # before the lab: every service and sandbox inherits it
    root = Path(tempfile.mkdtemp(prefix="corral-bench-hosts-"))
    figures: dict[int, list[tuple[float, float, int]]] = {n: [] for n in HOST_COUNTS}
    try:
        env = {
            "CORRAL_EXECUTOR_CAPACITY": str(args.capacity),
            "CORRAL_QUOTA_MAX_TASKS": "100000",
            "CORRAL_QUOTA_SUBMISSIONS_PER_SECOND": "100000",
        }
        with host_lab(root, max(HOST_COUNTS), **env) as lab:
            asyncio.run(rounds(lab, args, cgroup, figures))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    at_once = f"{args.total} at once over all hosts" if args.total else f"{args.capacity} per host at once"
    print(f"\n{args.n} one-step `true` tasks per burst, {at_once}, CPU from "
          f"{cgroup or '/proc'}; medians of {args.rounds} rounds (load average now {os.getloadavg()[0]:.1f}, "
          f"{os.cpu_count()} CPUs):")
    base = statistics.median(rate for rate, _, _ in figures[1])
    for hosts in HOST_COUNTS:
        rate = statistics.median(r for r, _, _ in figures[hosts])
        cpu = statistics.median(c for _, c, _ in figures[hosts])
        failed = sum(f for _, _, f in figures[hosts])
        print(f"  {hosts} host(s): {rate:6.1f} tasks/s  scaling x{rate / base:4.2f}  "
              f"CPU {cpu * 1000:5.1f} ms/task  ({failed} not completed)")


if __name__ == "__main__":
    main()
