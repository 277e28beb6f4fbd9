"""The `corral` command: `up` runs the whole system locally; `run`, `status`, `cancel`, `ls` use it."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from corral import cli_keys, cli_mcp, cli_pki, cli_run, cli_sandbox, cli_up
from corral.config import Settings
from corral.errors import CorralError, Unavailable

EXAMPLES = """examples:
  corral up                                   start every service (gateway on 127.0.0.1:8000)
  corral run 'echo hi' 'ls -la /app'          run two shell steps in a sandbox, follow them live
  corral run --python 'print(6 * 7)'
  corral run -f task.yaml --json              steps from a file, final status as JSON
  corral ls --state running
  corral status TASK_ID
  corral cancel TASK_ID
  corral sandbox create --desktop --ttl 3600  a long-lived sandbox; then corral run --sandbox ID ...
  corral pki init ./pki                       a CA and service certificates for another deployment
  corral keys create --admin --name admin --database   the first admin key (where the scheduler runs)
  CORRAL_API_KEY=crl_... corral keys create --name alice   a key for tenant alice

With API keys (CORRAL_AUTH=keys), client commands send CORRAL_API_KEY.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corral",
        description="Run AI agents' tasks in isolated sandboxes.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = commands.add_parser("up", help="start scheduler, memory, executor and gateway locally")
    cli_up.add_arguments(up)

    run = commands.add_parser(
        "run",
        help="run steps in a sandbox and follow them live",
        description="Submit a task, print its output as it comes, exit 0 if it completed, "
        "1 if it failed, 130 if cancelled (Ctrl-C cancels it), 2 on bad input.",
    )
    cli_run.add_run_arguments(run)

    status = commands.add_parser("status", help="show a task's state and step results")
    status.add_argument("task_id")
    status.add_argument("--json", action="store_true", help="the full status document as JSON")
    cli_run.add_scheduler_argument(status)

    cancel = commands.add_parser("cancel", help="cancel a task")
    cancel.add_argument("task_id")
    cli_run.add_scheduler_argument(cancel)

    ls = commands.add_parser("ls", help="list tasks, newest first")
    ls.add_argument("--state", help="only tasks in this state (scheduled, running, completed, ...)")
    ls.add_argument("--limit", type=int, default=50, help="at most this many (max 500)")
    ls.add_argument("--json", action="store_true")
    cli_run.add_scheduler_argument(ls)

    sandbox = commands.add_parser("sandbox", help="long-lived sandboxes: create, ls, rm, extend")
    cli_sandbox.add_arguments(sandbox)

    pki = commands.add_parser("pki", help="the deployment's CA and service certificates (compose, clusters)")
    cli_pki.add_arguments(pki)

    keys = commands.add_parser("keys", help="API keys: create, ls, revoke")
    cli_keys.add_arguments(keys)

    mcp = commands.add_parser("mcp", help="serve Corral's sandboxes as MCP tools (stdio, or --http)")
    cli_mcp.add_arguments(mcp)
    return parser


CLIENT_COMMANDS: dict[str, Callable[[argparse.Namespace, str], Coroutine[Any, Any, int]]] = {
    "run": cli_run.run,
    "status": cli_run.status,
    "cancel": cli_run.cancel,
    "ls": cli_run.list_tasks,
    "sandbox": cli_sandbox.run,
    "keys": cli_keys.run,
}


def run_client_command(args: argparse.Namespace) -> int:
    scheduler = args.scheduler or Settings().scheduler_address
    try:
        return asyncio.run(CLIENT_COMMANDS[args.command](args, scheduler))
    except cli_run.UsageError as exc:
        print(f"corral {args.command}: {exc}", file=sys.stderr)
        return cli_run.EXIT_ERROR
    except Unavailable:
        print(
            f"corral {args.command}: cannot reach the scheduler at {scheduler} (is `corral up` running?)",
            file=sys.stderr,
        )
        return cli_run.EXIT_ERROR
    except CorralError as exc:
        print(f"corral {args.command}: {exc.code.name}: {exc.message}", file=sys.stderr)
        return cli_run.EXIT_ERROR
    except KeyboardInterrupt:
        return cli_run.EXIT_CANCELLED


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "up":
        return cli_up.main(args)
    if args.command == "pki":
        return cli_pki.run(args)
    if args.command == "mcp":
        return cli_mcp.run(args)
    return run_client_command(args)


if __name__ == "__main__":
    sys.exit(main())
