"""`corral sandbox create|ls|rm|extend|network`: long-lived sandboxes, over gRPC to the scheduler."""

from __future__ import annotations

import argparse
import json
import sys

from corral import cli_run
from corral.api_keys import metadata_for
from corral.client import typed_errors
from corral.config import Settings
from corral.grpc_server import channel
from corral.network_json import NetworkRulesModel, checked_rules, network_of
from corral.schema import seconds_to_duration
from corral.v1 import sandbox_pb2, sandbox_pb2_grpc
from corral.views import SANDBOX_STATE_NAMES, SandboxView


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="sandbox_command", metavar="ACTION", required=True)
    create = commands.add_parser("create", help="create a sandbox; prints its id and tokens")
    create.add_argument("--desktop", action="store_true", help="with a desktop (noVNC, gui steps)")
    create.add_argument("--network", action="store_true", help="with network access")
    cli_run.add_network_rule_arguments(create, "(implies --network)")
    create.add_argument("--ttl", type=float, default=0, help="lifetime in seconds (default 3600)")
    create.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("--json", action="store_true")
    ls = commands.add_parser("ls", help="list sandboxes")
    ls.add_argument("--all", action="store_true", help="also deleted and expired ones")
    ls.add_argument("--json", action="store_true")
    rm = commands.add_parser("rm", help="delete sandboxes (kills everything in them)")
    rm.add_argument("sandbox_ids", nargs="+", metavar="SANDBOX_ID")
    extend = commands.add_parser("extend", help="extend a sandbox's lifetime to now + ttl")
    extend.add_argument("sandbox_id")
    extend.add_argument("--ttl", type=float, default=0, help="seconds (default: its ttl)")
    network = commands.add_parser(
        "network",
        help="replace a sandbox's network rules (effective for new connections at once); "
        "without --allow/--deny/--default, show its network status",
    )
    network.add_argument("sandbox_id")
    cli_run.add_network_rule_arguments(network)
    network.add_argument("--default", action="store_true", help="drop every rule: the default policy")
    network.add_argument("--json", action="store_true")
    for sub in (create, ls, rm, extend, network):
        cli_run.add_scheduler_argument(sub)


def _network_json(sandbox: sandbox_pb2.Sandbox) -> object:
    value = network_of(sandbox.spec.network, sandbox.spec.network_rules)
    return value.model_dump() if isinstance(value, NetworkRulesModel) else value


def _describe(sandbox: sandbox_pb2.Sandbox) -> dict[str, object]:
    return {
        "sandbox_id": sandbox.sandbox_id,
        "status": SANDBOX_STATE_NAMES.get(sandbox.state, "unspecified"),
        "desktop": sandbox.spec.desktop,
        "network": _network_json(sandbox),
        "executor_id": sandbox.executor_id,
        "expires_at": sandbox.expires_at.ToJsonString(),
        "error": sandbox.error or None,
    }


async def run(args: argparse.Namespace, scheduler: str) -> int:
    with typed_errors():
        return await _run(args, scheduler)


async def _run(args: argparse.Namespace, scheduler: str) -> int:
    key = metadata_for(Settings().api_key)  # CORRAL_API_KEY
    async with channel(scheduler, Settings(), "admin") as chan:
        stub = sandbox_pb2_grpc.SandboxServiceStub(chan)
        action = args.sandbox_command
        if action == "create":
            spec = sandbox_pb2.SandboxSpec(desktop=args.desktop, network=args.network or bool(args.allow or args.deny))
            spec.network_rules.CopyFrom(checked_rules(args.allow, args.deny))
            for item in args.env:
                key, sep, value = item.partition("=")
                if not sep:
                    raise cli_run.UsageError(f"--env wants KEY=VALUE, got {item!r}")
                spec.env[key] = value
            if args.ttl:
                spec.ttl.CopyFrom(seconds_to_duration(args.ttl))
            created = await stub.CreateSandbox(sandbox_pb2.CreateSandboxRequest(spec=spec), metadata=key)
            info = {**_describe(created.sandbox), "token": created.token, "view_token": created.view_token}
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                sid = created.sandbox.sandbox_id
                print(sid)
                print(f"token: {created.token}\nview token: {created.view_token}", file=sys.stderr)
                if args.desktop:
                    print(f"desktop: http://GATEWAY/v1/sandboxes/{sid}/vnc/?token={created.token}", file=sys.stderr)
                print(f"jupyter: http://GATEWAY/v1/sandboxes/{sid}/jupyter/?token={created.token}", file=sys.stderr)
                print(f"run tasks in it: corral run --sandbox {sid} 'echo hi'", file=sys.stderr)
        elif action == "ls":
            reply = await stub.ListSandboxes(sandbox_pb2.ListSandboxesRequest(include_ended=args.all), metadata=key)
            rows = [_describe(s) for s in reply.sandboxes]
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                for row in rows:
                    flags = ",".join(k for k in ("desktop", "network") if row[k]) or "-"
                    print(f"{row['sandbox_id']}  {row['status']:<8} {flags:<16} expires {row['expires_at']}")
        elif action == "rm":
            for sandbox_id in args.sandbox_ids:
                await stub.DeleteSandbox(sandbox_pb2.DeleteSandboxRequest(sandbox_id=sandbox_id), metadata=key)
                print(f"deleted {sandbox_id}", file=sys.stderr)
        elif action == "extend":
            message = sandbox_pb2.ExtendSandboxRequest(sandbox_id=args.sandbox_id)
            if args.ttl:
                message.ttl.CopyFrom(seconds_to_duration(args.ttl))
            extended = await stub.ExtendSandbox(message, metadata=key)
            print(f"{args.sandbox_id} expires at {extended.sandbox.expires_at.ToJsonString()}")
        elif action == "network":
            if args.allow or args.deny or args.default:
                rules = checked_rules(args.allow, args.deny)  # InvalidArgument naming the rule
                updated = await stub.UpdateSandboxNetwork(
                    sandbox_pb2.UpdateSandboxNetworkRequest(sandbox_id=args.sandbox_id, rules=rules),
                    metadata=key,
                )
                sandbox = updated.sandbox
            else:
                got = await stub.GetSandbox(sandbox_pb2.GetSandboxRequest(sandbox_id=args.sandbox_id), metadata=key)
                sandbox = got.sandbox
            _print_network(sandbox, args.json)
    return 0


def _print_network(sandbox: sandbox_pb2.Sandbox, as_json: bool) -> None:
    view = SandboxView.from_proto(sandbox)
    shown = {"sandbox_id": view.sandbox_id, "network": _network_json(sandbox),
             "network_status": view.network_status.model_dump() if view.network_status else None}
    if as_json:
        print(json.dumps(shown, indent=2))
        return
    rules = sandbox.spec.network_rules
    print(f"{sandbox.sandbox_id}: network {'on' if sandbox.spec.network else 'off'}")
    print(f"  allow: {', '.join(rules.allow) or '(any public destination)'}")
    print(f"  deny:  {', '.join(rules.deny) or '-'}")
    if view.network_status is not None:
        status = view.network_status
        print(f"  refused: {status.refused_connections} connections, {status.refused_lookups} lookups")
        if status.recent_refused_names:
            print(f"  recently refused names: {', '.join(status.recent_refused_names)}")
