#!/usr/bin/env python3
"""How fast a scheduler standby takes over (a benchmark, not a test).

    export CORRAL_TEST_POSTGRES_URL="$(scripts/start-postgres)"
    PYTHONPATH=$PWD .venv/bin/python bench/failover.py               # 3 kills
    PYTHONPATH=$PWD .venv/bin/python bench/failover.py --kills 5 --tasks 40

Starts memory, two scheduler replicas on a fresh PostgreSQL database and an executor
(bubblewrap) as real processes (tests/integration/failover/replicas.py). Each round keeps
--tasks short tasks in flight, kill -9s the leader and times, from the kill: the standby's
health SERVING (it holds the lease and has loaded the tasks), the executor registered with it
(it reports what it holds and the new leader follows those tasks again), and a task submitted
through every replica's address (a client following the leader) accepted; then starts the
killed replica again as the next standby. Every accepted task must end completed, once.

    PYTHONPATH=$PWD .venv/bin/python bench/failover.py --fence-overhead 300

instead times the fence alone: task-store writes (TaskStore.create, one transaction each) on
that database with the lease check in each transaction and without, in alternating rounds.
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
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests/integration/fault"), str(ROOT / "tests/integration/failover")]

import asyncpg  # noqa: E402
from fault_stack import Tally, sleepy_spec  # noqa: E402
from replicas import ReplicaStack  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from corral.db import normalize_url  # noqa: E402


async def _run(url: str, statement: str) -> None:
    conn = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def fence_overhead(url: str, writes: int) -> None:
    from corral.db import create_engine
    from services.scheduler import sandboxes  # noqa: F401 (its table is in the store's metadata)
    from services.scheduler.leadership import Leadership
    from services.scheduler.store import TaskStore

    engine = create_engine(url)
    store = TaskStore(engine)
    await store.create_tables()
    leadership = Leadership(engine, lease_seconds=30)
    await leadership.acquire()
    spec = sleepy_spec(steps=2, seconds=0)
    times: dict[str, list[float]] = {"fenced": [], "unfenced": []}
    for round_ in range(6):
        for label in ("fenced", "unfenced") if round_ % 2 else ("unfenced", "fenced"):
            store.fence = leadership.fence if label == "fenced" else None
            started = time.perf_counter()
            for _ in range(writes // 6):
                await store.create(uuid.uuid4().hex, spec)
            times[label].append((time.perf_counter() - started) / (writes // 6) * 1000)
    await leadership.stop()
    await engine.dispose()
    fenced, unfenced = statistics.median(times["fenced"]), statistics.median(times["unfenced"])
    print(f"one task write: {unfenced:.2f} ms unfenced, {fenced:.2f} ms fenced (median of 6 rounds, "
          f"x{fenced / unfenced:.2f}; load average {os.getloadavg()[0]:.1f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=30, help="tasks in flight at each kill")
    parser.add_argument("--fence-overhead", type=int, default=0, metavar="WRITES",
                        help="time the fence on WRITES task writes instead")
    args = parser.parse_args()
    server = os.environ.get("CORRAL_TEST_POSTGRES_URL", "")
    if not server:
        print('CORRAL_TEST_POSTGRES_URL is not set: export CORRAL_TEST_POSTGRES_URL="$(scripts/start-postgres)"')
        return 2
    server = normalize_url(server)
    name = f"corral_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_run(server, f'CREATE DATABASE "{name}"'))
    if args.fence_overhead:
        try:
            asyncio.run(fence_overhead(make_url(server).set(database=name).render_as_string(hide_password=False),
                                       args.fence_overhead))
        finally:
            asyncio.run(_run(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        return 0
    data_dir = Path(tempfile.mkdtemp(prefix="corral-failover-"))
    stack = ReplicaStack(data_dir, make_url(server).set(database=name).render_as_string(hide_password=False),
                         executors=1, capacity=8)
    figures: list[tuple[float, float, float]] = []
    ok = False
    accepted: list[str] = []
    try:
        stack.start_all()
        for round_ in range(1, args.kills + 1):
            leader = stack.leader()
            assert leader is not None
            accepted += stack.submit([sleepy_spec(steps=2, seconds=0.5) for _ in range(args.tasks)])
            killed = time.monotonic()
            stack.kill(leader)
            stack.wait_leader(60, besides=leader)
            serving = time.monotonic() - killed
            stack.wait_for_executors(1, limit=60)
            registered = time.monotonic() - killed
            accepted += stack.submit([sleepy_spec(steps=1, seconds=0)])
            first = time.monotonic() - killed
            figures.append((serving, registered, first))
            print(f"kill {round_}: standby leading after {serving:.2f}s, executor back {registered:.2f}s, "
                  f"a new task accepted {first:.2f}s (load average {os.getloadavg()[0]:.1f})", flush=True)
            stack.start(leader)
            stack.wait_in_log(leader, "standing by", 60)
        tally = Tally.of(stack.audit(stack.wait_ended(accepted, limit=300)))
        print(f"\n{len(accepted)} tasks accepted: {tally.completed} completed, {tally.run_twice} run twice, "
              f"{tally.misnumbered} misnumbered, {tally.unfinished} unfinished")
        for failure in tally.failures:
            print("  failed:", failure)
        for label, index in (("standby leading", 0), ("executor back", 1), ("new task accepted", 2)):
            values = [f[index] for f in figures]
            print(f"{label:>20}: median {statistics.median(values):.2f}s, max {max(values):.2f}s")
        ok = tally.completed == len(accepted) and not tally.run_twice and not tally.misnumbered
        return 0 if ok else 1
    finally:
        stack.stop()
        asyncio.run(_run(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if ok:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            print("logs kept in", data_dir)


if __name__ == "__main__":
    sys.exit(main())
