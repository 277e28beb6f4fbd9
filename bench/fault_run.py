#!/usr/bin/env python3
"""Runs many tasks through a real Corral while killing its services, then counts what came of
each task (a fault run, not a test: it reports, it does not assert).

    PYTHONPATH=$PWD .venv/bin/python bench/fault_run.py                          # 2000 tasks, scheduler kill
    PYTHONPATH=$PWD .venv/bin/python bench/fault_run.py -n 500 --kill scheduler,memory,executor

Starts memory, scheduler, executors (bubblewrap) and the gateway as processes (tests/harness.py,
tests/integration/fault/fault_stack.py), submits N tasks of a few short sleeping steps, and once
a share of them has ended kill -9s each named service in turn (then starts it again after
--outage seconds). The executor killed is the first one; its running tasks fail (its sandboxes
die with it), which the counts show apart. When all tasks ended it prints:
  completed / failed / cancelled / unfinished, tasks that started more than once, tasks whose
  event numbers have a gap or a repeat, and history events missing (each task's events against
  its history in the memory service).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration" / "fault")]

from fault_stack import ENDED, FaultStack, Tally, sleepy_spec  # noqa: E402

from corral.v1 import task_pb2  # noqa: E402

KILLABLE = ("scheduler", "memory", "executor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2000, help="tasks to run (default 2000)")
    parser.add_argument("--kill", default="scheduler", help="services to kill -9, comma-separated, in order: "
                        + ", ".join(KILLABLE))
    parser.add_argument("--executors", type=int, default=2)
    parser.add_argument("--capacity", type=int, default=8, help="tasks per executor at once")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=0.2)
    parser.add_argument("--outage", type=float, default=2.0, help="seconds each killed service stays down")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    kills = [k for k in args.kill.split(",") if k]
    if unknown := set(kills) - set(KILLABLE):
        parser.error(f"--kill: unknown service(s) {', '.join(sorted(unknown))}; choose among {', '.join(KILLABLE)}")

    data_dir = Path(tempfile.mkdtemp(prefix="corral-fault-"))
    stack = FaultStack(data_dir, executors=args.executors, capacity=args.capacity, gateway=True)
    try:
        stack.start_all()
        started = time.monotonic()
        task_ids = stack.submit([sleepy_spec(args.steps, args.step_seconds) for _ in range(args.n)])
        print(f"{args.n} tasks submitted in {time.monotonic() - started:.1f}s", flush=True)
        for i, name in enumerate(kills):
            # Spread the kills over the run: after 1/(k+1), 2/(k+1)... of the tasks ended.
            wait_for_ended_share(stack, task_ids, (i + 1) / (len(kills) + 1))
            print(f"kill -9 {name}", flush=True)
            stack.kill(name)
            time.sleep(args.outage)
            stack.start(name)
            print(f"{name} started again", flush=True)
        tasks = stack.wait_ended(task_ids, limit=max(600.0, args.n * 0.5))
        print(f"all ended {time.monotonic() - started:.1f}s after the first submission", flush=True)
        undelivered = stack.wait_history_delivered()
        print(f"history delivered {time.monotonic() - started:.1f}s after the first submission "
              f"({undelivered} bytes still held); auditing", flush=True)
        audits = stack.audit(tasks, history=True)
        tally = Tally.of(audits)
        # Where history is missing: the killed executor's own tasks may lose what it held in
        # memory at the kill; the rest must lose nothing.
        missing_by_executor = Counter(
            (tasks[a.task_id].executor_id, task_pb2.TaskState.Name(a.state))
            for a in audits for _ in range(a.history_missing())
        )
        scheduler_log = stack.log("scheduler")
        taken_back = scheduler_log.count("following a task again")
        requeued = scheduler_log.count("assigned task never started; requeued")
    finally:
        stack.stop()
        if not args.keep:
            # The other executors' data directories are its siblings (tests/harness.py).
            for directory in (data_dir, *data_dir.parent.glob(f"{data_dir.name}-executor-*")):
                shutil.rmtree(directory, ignore_errors=True)
    print(
        f"tasks {tally.tasks}: completed {tally.completed}, failed {tally.failed}, cancelled {tally.cancelled}, "
        f"unfinished {tally.unfinished}; run twice {tally.run_twice}; events misnumbered {tally.misnumbered}; "
        f"history events missing {tally.history_missing}"
    )
    print(f"after the scheduler's restarts: {taken_back} running tasks followed again, "
          f"{requeued} assigned but never started requeued")
    for reason in tally.failures:
        print(f"  failed: {reason}")
    for (executor_id, state), missing in sorted(missing_by_executor.items()):
        print(f"  history events missing: {missing} of tasks {state} on {executor_id}")
    if args.keep:
        print(f"data directory kept: {data_dir}")


def wait_for_ended_share(stack: FaultStack, task_ids: list[str], share: float) -> None:
    wanted = int(len(task_ids) * share)
    sample = task_ids[:: max(1, len(task_ids) // 200)]  # tasks run in submission order, roughly
    while True:
        tasks = stack.states(sample)
        if sum(t.state in ENDED for t in tasks.values()) >= int(len(sample) * share) or wanted == 0:
            return
        time.sleep(0.5)


if __name__ == "__main__":
    main()
