"""`corral run`, `status`, `cancel`, `ls`: the scheduler's API from a terminal.

Exit codes of `corral run`: 0 completed, 1 failed, 130 cancelled, 2 bad input or no scheduler.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from corral.client import CorralClient
from corral.errors import Unavailable
from corral.schema import (
    STEP_STATE_NAMES,
    TASK_STATE_NAMES,
    TASK_STATES_BY_NAME,
    TaskRequest,
    event_to_json,
    task_to_json,
)
from corral.v1 import task_pb2

EXIT_COMPLETED, EXIT_FAILED, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 2, 130
EXIT_BY_STATE = {
    task_pb2.TASK_STATE_COMPLETED: EXIT_COMPLETED,
    task_pb2.TASK_STATE_FAILED: EXIT_FAILED,
    task_pb2.TASK_STATE_CANCELLED: EXIT_CANCELLED,
}


class UsageError(Exception):
    """Bad input from the user: printed as one clear message, never a traceback."""


class _AppendStep(argparse.Action):
    """Collects --shell/--python/--typescript into one ordered list of steps."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        tool = self.const
        field = "command" if tool == "shell" else "code"
        steps = list(getattr(namespace, "extra_steps", None) or [])
        steps.append({"tool": tool, field: values})
        namespace.extra_steps = steps


def add_scheduler_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scheduler",
        metavar="HOST:PORT",
        help="scheduler address (default: CORRAL_SCHEDULER_ADDRESS or 127.0.0.1:50051)",
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("commands", nargs="*", metavar="COMMAND", help="shell steps, run first, in order")
    for flag, tool, what in (
        ("--shell", "shell", "a shell command"),
        ("--python", "python", "Python code"),
        ("--typescript", "typescript", "TypeScript code"),
    ):
        parser.add_argument(
            flag, action=_AppendStep, const=tool, dest="extra_steps", metavar="CODE",
            help=f"a step running {what} (repeatable; these keep their order)",
        )
    parser.add_argument(
        "-f", "--file", metavar="FILE",
        help="task as JSON or YAML ('-' for stdin): {steps: [...], step_timeout, network, env, limits}"
        " or just a list of steps; command-line steps are appended",
    )
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="timeout of every step")
    parser.add_argument("--network", action="store_true", help="give the sandbox network access")
    add_network_rule_arguments(parser, "(implies --network)")
    parser.add_argument("--sandbox", metavar="SANDBOX_ID", help="run in this long-lived sandbox (corral sandbox create)")
    parser.add_argument(
        "-e", "--env", action="append", default=[], metavar="NAME=VALUE", help="environment variable"
    )
    parser.add_argument("--json", action="store_true", help="print only the final status as JSON")
    parser.add_argument("--events", action="store_true", help="print every event as a JSON line")
    parser.add_argument("-q", "--quiet", action="store_true", help="no step headers or summary")
    add_scheduler_argument(parser)


def add_network_rule_arguments(parser: argparse.ArgumentParser, note: str = "") -> None:
    parser.add_argument(
        "--allow", action="append", default=[], metavar="RULE",
        help=f"reach only these: domain, *.domain, address or CIDR (repeatable) {note}".rstrip(),
    )
    parser.add_argument(
        "--deny", action="append", default=[], metavar="RULE",
        help=f"never reach these, even if allowed (repeatable) {note}".rstrip(),
    )


def network_value(args: argparse.Namespace) -> bool | dict[str, list[str]]:
    """--network, --allow and --deny as the JSON `"network"` value."""
    if args.allow or args.deny:
        return {"allow": list(args.allow), "deny": list(args.deny)}
    return bool(args.network)


def load_task_file(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid JSON or YAML: {exc}") from exc
    if isinstance(document, list):
        document = {"steps": document}
    if not isinstance(document, dict):
        raise UsageError(f"{path} must hold a task object ({{\"steps\": [...]}}) or a list of steps")
    return document


def describe_validation_error(source: str, error: ValidationError) -> str:
    lines = [f"{source}: invalid task:"]
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(task)"
        lines.append(f"  {where}: {problem['msg']}")
    return "\n".join(lines)


def build_request(args: argparse.Namespace) -> TaskRequest:
    document: dict[str, Any] = load_task_file(args.file) if args.file else {"steps": []}
    steps = list(document.get("steps") or [])
    steps += [{"tool": "shell", "command": command} for command in args.commands]
    steps += args.extra_steps or []
    document["steps"] = steps
    if not steps:
        raise UsageError("nothing to run: give shell commands, --python/--typescript code or -f FILE")
    if args.timeout is not None:
        document["step_timeout"] = args.timeout
    if args.network or args.allow or args.deny:
        document["network"] = network_value(args)
    if args.sandbox:
        document["sandbox_id"] = args.sandbox
    for pair in args.env:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--env expects NAME=VALUE, got {pair!r}")
        document.setdefault("env", {})[name] = value
    try:
        return TaskRequest.model_validate(document)
    except ValidationError as exc:
        raise UsageError(describe_validation_error(args.file or "command line", exc)) from exc


def describe_step(request: TaskRequest, index: int) -> str:
    if index >= len(request.steps):
        return ""
    step = request.steps[index]
    detail = getattr(step, "command", None) or getattr(step, "code", None) or getattr(step, "path", "")
    detail = str(detail).strip().replace("\n", "; ")
    return detail if len(detail) <= 70 else detail[:67] + "..."


class RunPrinter:
    """Shows a task's events as they arrive: output as-is, headers and summary on stderr."""

    def __init__(self, request: TaskRequest, quiet: bool, events: bool) -> None:
        self.request = request
        self.quiet = quiet
        self.events = events
        self.total = len(request.steps)

    def note(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def show(self, event: task_pb2.TaskEvent) -> None:
        if self.events:
            print(json.dumps(event_to_json(event)), flush=True)
            return
        kind = event.WhichOneof("event")
        if kind == "started":
            self.note(f"--- running on {event.started.executor_id} in {event.started.task_dir}")
        elif kind == "step_started":
            index = event.step_started.index
            self.note(
                f"--- step {index + 1}/{self.total} {event.step_started.tool}: "
                f"{describe_step(self.request, index)}"
            )
        elif kind == "output":
            out = sys.stderr if event.output.stream == task_pb2.OUTPUT_STREAM_STDERR else sys.stdout
            out.write(event.output.data)
            out.flush()
        elif kind == "network_refused":
            self.note(f"--- network: {event.network_refused.description}")
        elif kind == "step_finished":
            result = event.step_finished.result
            if result.state == task_pb2.STEP_STATE_COMPLETED:
                return
            parts = [STEP_STATE_NAMES.get(result.state, "unknown")]
            if result.HasField("exit_code"):
                parts.append(f"exit code {result.exit_code}")
            if result.timed_out:
                parts.append("timed out")
            if result.error:
                parts.append(result.error)
            self.note(f"--- step {result.index + 1}/{self.total} {', '.join(parts)}")

    def summary(self, task: task_pb2.Task) -> None:
        state = TASK_STATE_NAMES.get(task.state, "unknown")
        took = ""
        if task.HasField("started_at") and task.HasField("finished_at"):
            seconds = (task.finished_at.ToNanoseconds() - task.started_at.ToNanoseconds()) / 1e9
            took = f" in {seconds:.2f}s"
        reason = f": {task.error}" if task.error else ""
        self.note(f"--- task {task.task_id} {state}{took}{reason}")
        if task.log_path:
            self.note(f"--- log: {task.log_path} (in the sandbox)")


async def follow(client: CorralClient, task_id: str, printer: RunPrinter | None) -> task_pb2.Task:
    """Watches the task to its end, resuming after a dropped stream from the last event seen."""
    last_sequence = 0
    attempts = 0
    while True:
        try:
            async for event in client.watch(task_id, after_sequence=last_sequence):
                last_sequence = max(last_sequence, event.sequence)
                attempts = 0
                if printer is not None:
                    printer.show(event)
            return await client.get(task_id)
        except Unavailable:
            attempts += 1
            if attempts > 5:
                raise
            await asyncio.sleep(1)


async def run(args: argparse.Namespace, scheduler: str) -> int:
    request = build_request(args)
    printer = None if args.json else RunPrinter(request, args.quiet, args.events)
    async with CorralClient(scheduler) as client:
        task_id = await client.submit(request)
        if printer is not None and not args.events:
            printer.note(f"--- task {task_id} submitted")

        # Ctrl-C cancels the task (and we still follow it to its end); a second one quits.
        loop = asyncio.get_running_loop()
        watching = asyncio.ensure_future(follow(client, task_id, printer))
        interrupts = 0
        pending: set[asyncio.Task[task_pb2.Task]] = set()

        def on_interrupt() -> None:
            nonlocal interrupts
            interrupts += 1
            if interrupts == 1:
                print(f"\ncorral: cancelling task {task_id} (Ctrl-C again to stop waiting)",
                      file=sys.stderr, flush=True)
                pending.add(loop.create_task(client.cancel(task_id)))
            else:
                watching.cancel()

        loop.add_signal_handler(signal.SIGINT, on_interrupt)
        try:
            task = await watching
        except asyncio.CancelledError:
            return EXIT_CANCELLED
        finally:
            loop.remove_signal_handler(signal.SIGINT)
        if args.json:
            print(json.dumps(task_to_json(task), indent=2))
        elif printer is not None and not args.events:
            printer.summary(task)
        return EXIT_BY_STATE.get(task.state, EXIT_FAILED)


async def status(args: argparse.Namespace, scheduler: str) -> int:
    async with CorralClient(scheduler) as client:
        task = await client.get(args.task_id)
    if args.json:
        print(json.dumps(task_to_json(task), indent=2))
        return 0
    doc = task_to_json(task)
    print(f"task {doc['task_id']}: {doc['status']}" + (f" ({doc['error']})" if doc["error"] else ""))
    for step in doc["steps"]:
        exit_code = "" if step["exit_code"] is None else f" exit {step['exit_code']}"
        print(f"  step {step['index'] + 1} {step['tool']:<10} {step['status']:<9}{exit_code}"
              f" {step['duration_seconds']:.3f}s" + (f"  {step['error']}" if step["error"] else ""))
    if doc["log_path"]:
        print(f"  log: {doc['log_path']} (in the sandbox)")
    return 0


async def cancel(args: argparse.Namespace, scheduler: str) -> int:
    async with CorralClient(scheduler) as client:
        task = await client.cancel(args.task_id)
    print(f"task {task.task_id}: {TASK_STATE_NAMES.get(task.state, 'unknown')}")
    return 0


async def list_tasks(args: argparse.Namespace, scheduler: str) -> int:
    state = task_pb2.TASK_STATE_UNSPECIFIED
    if args.state:
        if args.state not in TASK_STATES_BY_NAME or args.state == "unspecified":
            names = ", ".join(n for n in TASK_STATES_BY_NAME if n != "unspecified")
            raise UsageError(f"unknown state {args.state!r}; one of {names}")
        state = TASK_STATES_BY_NAME[args.state]
    async with CorralClient(scheduler) as client:
        tasks, _ = await client.list(state=state, page_size=args.limit)
    if args.json:
        print(json.dumps([task_to_json(t) for t in tasks], indent=2))
        return 0
    for task in tasks:
        created = task.created_at.ToJsonString() if task.HasField("created_at") else "-"
        print(f"{task.task_id}  {TASK_STATE_NAMES.get(task.state, 'unknown'):<10} "
              f"{len(task.spec.steps):>3} steps  {created}")
    return 0
