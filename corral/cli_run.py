"""`corral run`: submit a task to the gateway and follow its events live.

Exit codes: 0 completed; a failed task exits with its failed step's exit code (1 when that step
has none: a timeout, a refused path, a gui step...); 130 cancelled; 2 bad input or no gateway.
The task is checked by the gateway (its 400 names the field); nothing of the server's is
imported here.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from corral.cli_client import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    add_network_rule_arguments,
    make_client,
    network_value,
    parse_env,
)

if TYPE_CHECKING:
    from corral.sdk.sync import Task


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


def add_run(parser: argparse.ArgumentParser) -> None:
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


def load_task_file(path: str) -> dict[str, Any]:
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as file:
                text = file.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        document = json.loads(text)
    except ValueError:
        import yaml  # only for files that are not JSON

        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UsageError(f"{path} is not valid JSON or YAML: {exc}") from exc
    if isinstance(document, list):
        document = {"steps": document}
    if not isinstance(document, dict):
        raise UsageError(f"{path} must hold a task object ({{\"steps\": [...]}}) or a list of steps")
    return document


def build_task(args: argparse.Namespace) -> dict[str, Any]:
    """The task document (the REST API's format) the arguments describe."""
    document: dict[str, Any] = load_task_file(args.file) if args.file else {}
    steps = document.get("steps") or []
    if not isinstance(steps, list):
        raise UsageError(f"{args.file}: steps must be a list")
    steps = [*steps, *({"tool": "shell", "command": c} for c in args.commands), *(args.extra_steps or [])]
    if not steps:
        raise UsageError("nothing to run: give shell commands, --python/--typescript code or -f FILE")
    document["steps"] = steps
    if args.timeout is not None:
        document["step_timeout"] = args.timeout
    if args.network or args.allow or args.deny:
        document["network"] = network_value(args)
    if args.sandbox:
        document["sandbox_id"] = args.sandbox
    if args.env:
        document["env"] = {**(document.get("env") or {}), **parse_env(args.env)}
    return document


def describe_step(step: Any) -> str:
    if not isinstance(step, dict):
        return ""
    detail = step.get("command") or step.get("code") or step.get("path") or step.get("action") or ""
    detail = str(detail).strip().replace("\n", "; ")
    return detail if len(detail) <= 70 else detail[:67] + "..."


def step_words(result: dict[str, Any]) -> str:
    """How a step ended, in words: 'failed, exit code 3'."""
    parts = [str(result.get("status", "unknown"))]
    if result.get("exit_code") is not None:
        parts.append(f"exit code {result['exit_code']}")
    if result.get("timed_out"):
        parts.append("timed out")
    error = str(result.get("error") or "").removeprefix(f"{parts[0]}: ")
    if error and error != f"exited with code {result.get('exit_code')}":  # not said twice
        parts.append(error)
    return ", ".join(parts)


class RunPrinter:
    """Shows a task's events as they arrive: output as-is, headers and summary on stderr.
    Steps are numbered from 1, as `step 2/3`."""

    def __init__(self, steps: list[Any], quiet: bool, events: bool, silent: bool = False) -> None:
        self.steps = steps
        self.quiet = quiet or silent
        self.events = events
        # Nothing at all as it runs (--json prints only the final status).
        self.silent = silent
        self.total = len(steps)
        # The failed step's result, for the exit code.
        self.failed_step: dict[str, Any] | None = None

    def note(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def step_name(self, index: int) -> str:
        return f"step {index + 1}/{self.total}"

    def show(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "step_finished" and self.failed_step is None and data.get("result", {}).get("status") == "failed":
            self.failed_step = data["result"]  # the first failed one (those after it are skipped)
        if self.silent:
            return
        if self.events:
            print(json.dumps(data), flush=True)
            return
        if kind == "started":
            self.note(f"--- running on {data.get('executor_id')} in {data.get('task_dir')}")
        elif kind == "step_started":
            index = int(data.get("index", 0))
            step = self.steps[index] if index < self.total else None
            self.note(f"--- {self.step_name(index)} {data.get('tool')}: {describe_step(step)}")
        elif kind == "output":
            out = sys.stderr if data.get("stream") == "stderr" else sys.stdout
            out.write(str(data.get("data", "")))
            out.flush()
        elif kind == "network_refused":
            self.note(f"--- network: {data.get('description')}")
        elif kind == "step_finished" and data.get("result", {}).get("status") != "completed":
            result: dict[str, Any] = data["result"]
            self.note(f"--- {self.step_name(int(result.get('index', 0)))} {step_words(result)}")

    def summary(self, final: dict[str, Any]) -> None:
        took = ""
        if final.get("started_at") and final.get("finished_at"):
            took = f" in {_seconds_between(final['started_at'], final['finished_at']):.2f}s"
        reason = f": {final['error']}" if final.get("error") else ""
        self.note(f"--- task {final.get('task_id')} {final.get('status')}{took}{reason}")
        if final.get("log_path"):
            self.note(f"--- log: {final['log_path']} (in the sandbox)")


def _seconds_between(start: str, end: str) -> float:
    from datetime import datetime

    def parse(text: str) -> float:
        head, _, rest = text.rstrip("Z").partition(".")
        return datetime.fromisoformat(head + ("." + rest[:6] if rest else "") + "+00:00").timestamp()

    try:
        return parse(end) - parse(start)
    except ValueError:
        return 0.0


def exit_code(status: str, failed_step: dict[str, Any] | None) -> int:
    """0 completed, the failed step's own exit code (1 without one), 130 cancelled."""
    if status == "completed":
        return EXIT_OK
    if status == "cancelled":
        return EXIT_CANCELLED
    code = failed_step.get("exit_code") if failed_step else None
    return int(code) if isinstance(code, int) and 0 < code < 256 else EXIT_FAILED


def follow(task: Task, printer: RunPrinter) -> str:
    """Shows the task's events to its end; its final status. Ctrl-C cancels the task (and it is
    still followed to its end); a second Ctrl-C stops following."""
    from corral import errors

    status = ""
    interrupted = False
    while True:
        try:
            for kind, data in task.events():
                printer.show(kind, data)
                if kind == "finished":
                    status = str(data.get("status", ""))
            return status or task.status().status
        except KeyboardInterrupt:
            if interrupted:
                raise
            interrupted = True
            print(f"\ncorral: cancelling task {task.id} (Ctrl-C again to stop waiting)", file=sys.stderr, flush=True)
            try:
                task.cancel()
            except errors.FailedPrecondition:
                pass  # it ended meanwhile


def run(args: argparse.Namespace) -> int:
    from corral.sdk.sync import Task

    document = build_task(args)
    printer = RunPrinter(document["steps"], args.quiet, args.events and not args.json, silent=args.json)
    client = make_client(args)
    try:
        with Task.submit(document, client=client) as task:
            if not args.events:
                printer.note(f"--- task {task.id} submitted")
            status = follow(task, printer)
            if args.json or not (printer.quiet or printer.events):  # (-q: no final request)
                final = task.status()
                if args.json:
                    print(json.dumps(final.raw, indent=2))
                else:
                    printer.summary(final.raw)
    finally:
        client.close()
    return exit_code(status, printer.failed_step)
