"""`corral sandbox create|ls|rm|extend|network`: long-lived sandboxes, over the gateway's REST API."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from corral.cli_client import (
    EXIT_OK,
    add_connection_arguments,
    add_network_rule_arguments,
    age,
    make_client,
    parse_env,
)


def add_sandbox(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="sandbox_command", metavar="ACTION", required=True)
    create = commands.add_parser("create", help="create a sandbox; prints its id, tokens and URLs")
    create.add_argument("--desktop", action="store_true", help="with a desktop (noVNC, gui steps)")
    create.add_argument("--network", action="store_true", help="with network access")
    add_network_rule_arguments(create, "(implies --network)")
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
    add_network_rule_arguments(network)
    network.add_argument("--default", action="store_true", help="drop every rule: the default policy")
    network.add_argument("--json", action="store_true")
    for sub in (create, ls, rm, extend, network):
        add_connection_arguments(sub)  # also after the action: `corral sandbox ls --url ...`


def sandbox(args: argparse.Namespace) -> int:
    from corral.sdk.sync import Sandbox

    action = args.sandbox_command
    with make_client(args) as client:
        if action == "create":
            network: bool | dict[str, list[str]] = bool(args.network)
            if args.allow or args.deny:
                network = {"allow": list(args.allow), "deny": list(args.deny)}
            created = Sandbox.create(desktop=args.desktop, ttl=args.ttl or None, network=network,
                                     env=parse_env(args.env) or None, client=client)
            _print_created(created.info, client.connection.url, args.json)
        elif action == "ls":
            rows = Sandbox.list(include_ended=args.all, client=client)
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                _print_table(rows)
        elif action == "rm":
            from corral.sdk import calls

            for sandbox_id in args.sandbox_ids:
                client.send(calls.delete_sandbox(sandbox_id))  # NotFound for an unknown id (kill() ignores it)
                print(f"deleted {sandbox_id}", file=sys.stderr)
        elif action == "extend":
            extended = Sandbox(client, {"sandbox_id": args.sandbox_id}, owned=False)
            extended.extend(args.ttl or None)
            print(f"{args.sandbox_id} expires at {extended.refresh().get('expires_at')}")
        elif action == "network":
            target = Sandbox(client, {"sandbox_id": args.sandbox_id}, owned=False)
            if args.allow or args.deny or args.default:
                target.set_network(args.allow, args.deny)  # InvalidArgument names a bad rule
            _print_network(target.refresh(), args.json)
    return EXIT_OK


def _print_created(info: dict[str, Any], base_url: str, as_json: bool) -> None:
    """Its id on stdout; tokens and the URLs to open (the gateway's own address) on stderr."""
    sid = info["sandbox_id"]
    token = info.get("token", "")
    urls = {}
    if info.get("vnc_path"):
        urls["desktop"] = f"{base_url}{info['vnc_path']}?token={token}"
    if info.get("jupyter_url") or info.get("jupyter_path"):
        urls["jupyter"] = base_url + (info.get("jupyter_url") or f"{info['jupyter_path']}?token={token}")
    if as_json:
        print(json.dumps({**info, "urls": urls}, indent=2))
        return
    print(sid)
    print(f"token: {token}\nview token: {info.get('view_token', '')}", file=sys.stderr)
    for name, url in urls.items():
        print(f"{name}: {url}", file=sys.stderr)
    print(f"run commands in it: corral exec {sid} -- ls -la   (or corral run --sandbox {sid} ...)", file=sys.stderr)


def _print_table(rows: list[dict[str, Any]]) -> None:
    table = [("SANDBOX", "STATUS", "AGE", "FEATURES", "EXPIRES")]
    for row in rows:
        features = ",".join(k for k in ("desktop", "network") if row.get(k)) or "-"
        table.append((row["sandbox_id"], str(row.get("status")), age(row.get("created_at")), features,
                      str(row.get("expires_at") or "-")))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for line in table:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())


def _print_network(info: dict[str, Any], as_json: bool) -> None:
    network = info.get("network")
    shown = {"sandbox_id": info["sandbox_id"], "network": network, "network_status": info.get("network_status")}
    if as_json:
        print(json.dumps(shown, indent=2))
        return
    rules = network if isinstance(network, dict) else {}
    print(f"{info['sandbox_id']}: network {'on' if network else 'off'}")
    print(f"  allow: {', '.join(rules.get('allow') or []) or '(any public destination)'}")
    print(f"  deny:  {', '.join(rules.get('deny') or []) or '-'}")
    status = info.get("network_status")
    if status:
        print(f"  refused: {status.get('refused_connections', 0)} connections, "
              f"{status.get('refused_lookups', 0)} lookups")
        if status.get("recent_refused_names"):
            print(f"  recently refused names: {', '.join(status['recent_refused_names'])}")
