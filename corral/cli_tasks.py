"""`corral status | ls | logs | cancel`: tasks, over the gateway's REST API."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from corral.cli_client import EXIT_OK, UsageError, age, make_client

# The states `--state` takes (the gateway's list filter).
STATES = ("scheduled", "running", "completed", "failed", "cancelled")


def add_status(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task_id")
    parser.add_argument("--json", action="store_true", help="the full status document as JSON")


def add_ls(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", help=f"only tasks in this state ({', '.join(STATES)})")
    parser.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    parser.add_argument("--json", action="store_true", help="the tasks' status documents as a JSON list")


def add_logs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task_id")
    parser.add_argument("-f", "--follow", action="store_true", help="follow the output live until the task ends")
    parser.add_argument("--events", action="store_true", help="every event as a JSON line, not only the output")


def add_cancel(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task_id")


def status(args: argparse.Namespace) -> int:
    from corral.sdk.sync import Task

    with make_client(args) as client:
        doc = Task.connect(args.task_id, client=client).status().raw
    if args.json:
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    print(f"task {doc['task_id']}: {doc['status']}" + (f" ({doc['error']})" if doc.get("error") else ""))
    for step in doc.get("steps", []):
        exit_code = "" if step.get("exit_code") is None else f" exit {step['exit_code']}"
        print(f"  step {step['index'] + 1} {step['tool']:<10} {step['status']:<9}{exit_code}"
              f" {step.get('duration_seconds') or 0:.3f}s" + (f"  {step['error']}" if step.get("error") else ""))
    if doc.get("log_path"):
        print(f"  log: {doc['log_path']} (in the sandbox)")
    return EXIT_OK


def _what(task: dict[str, Any]) -> str:
    """What the task runs, in a few words (the gateway's summary), and how many steps more."""
    steps = len(task.get("steps", []))
    text = str(task.get("summary") or "-")
    return text + (f" (+{steps - 1} steps)" if steps > 1 else "")


def ls(args: argparse.Namespace) -> int:
    from corral.sdk.sync import Task

    if args.state and args.state not in STATES:
        raise UsageError(f"unknown state {args.state!r}; one of {', '.join(STATES)}")
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    with make_client(args) as client:
        tasks = [t.raw for t in Task.list(state=args.state, limit=args.limit, client=client)]
    if args.json:
        print(json.dumps(tasks, indent=2))
        return EXIT_OK
    rows = [("TASK", "STATUS", "AGE", "STEPS", "COMMAND")]
    rows += [(t["task_id"], t["status"], age(t.get("created_at")), str(len(t.get("steps", []))), _what(t))
             for t in tasks]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    return EXIT_OK


def logs(args: argparse.Namespace) -> int:
    """The task's output: what it printed so far, or (with -f) live to its end."""
    from corral.sdk.sync import Task

    with make_client(args) as client:
        task = Task.connect(args.task_id, client=client)
        if not args.follow and not args.events:
            for step in task.status().steps:
                sys.stdout.write(step.stdout)
                sys.stderr.write(step.stderr)
            return EXIT_OK
        for kind, data in task.events():
            if args.events:
                print(json.dumps(data), flush=True)
            elif kind == "output":
                out = sys.stderr if data.get("stream") == "stderr" else sys.stdout
                out.write(str(data.get("data", "")))
                out.flush()
            elif kind == "finished" and data.get("status") != "completed":
                print(f"--- task {task.id} {data.get('status')}" + (f": {data['error']}" if data.get("error") else ""),
                      file=sys.stderr)
    return EXIT_OK


def cancel(args: argparse.Namespace) -> int:
    from corral.sdk.sync import Task

    with make_client(args) as client:
        result = Task(client, args.task_id).cancel()
    print(f"task {result.task_id}: {result.status}")
    return EXIT_OK
