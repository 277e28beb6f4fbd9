"""`corral keys create | ls | revoke`: API keys, over the gateway's /v1/keys (with an admin key
in --api-key or CORRAL_API_KEY), or with `--database` straight in the scheduler's database.

`--database` is how the first admin key is made: run where the scheduler runs (the same
CORRAL_DATA_DIR or CORRAL_SCHEDULER_DATABASE_URL; in compose, `docker-compose exec scheduler`),
it needs no key, only what already gives the run of the database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from corral.cli_client import EXIT_OK, UsageError, add_connection_arguments, make_client


def add_keys(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = commands.add_parser("create", help="make a key; prints it once")
    create.add_argument("--name", required=True, help="what the key is for (e.g. ci, alice)")
    create.add_argument("--tenant", default="", help="the tenant that owns what it makes (default: the name)")
    create.add_argument("--admin", action="store_true", help="sees and manages every tenant and key")
    ls = commands.add_parser("ls", help="list keys (never the keys themselves)")
    ls.add_argument("--all", action="store_true", help="also revoked keys")
    revoke = commands.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key_id")
    for sub in (create, ls, revoke):
        sub.add_argument("--json", action="store_true")
        sub.add_argument(
            "--database", action="store_true",
            help="act on the scheduler's database directly, without a key (run it where the "
            "scheduler runs: this is how the first admin key is made)",
        )
        add_connection_arguments(sub)


def describe(key: Any) -> dict[str, Any]:
    """A key from the database (an ApiKey message) as the gateway describes one."""
    return {
        "key_id": key.key_id,
        "name": key.name,
        "tenant_id": key.tenant_id,
        "admin": key.admin,
        "created_at": key.created_at.ToJsonString(),
        "revoked_at": key.revoked_at.ToJsonString() if key.HasField("revoked_at") else None,
    }


def keys(args: argparse.Namespace) -> int:
    result = _on_database(args) if args.database else _over_rest(args)
    _print(args, result)
    return EXIT_OK


def _over_rest(args: argparse.Namespace) -> Any:
    from corral.sdk import calls

    with make_client(args) as client:
        if args.keys_command == "create":
            created = client.json(calls.create_key(args.name, args.tenant, args.admin))
            return created, created.pop("key")
        if args.keys_command == "ls":
            return client.json(calls.list_keys(args.all)).get("keys", [])
        return client.json(calls.revoke_key(args.key_id))


def _on_database(args: argparse.Namespace) -> Any:
    try:
        from corral.config import Settings
        from corral.db import create_engine
        from services.scheduler.key_store import KeyStore
    except ImportError as exc:
        raise UsageError(f"--database needs the server's packages (pip install 'corral[server]'): {exc}") from None

    async def act() -> Any:
        engine = create_engine(Settings().database_url("scheduler"))
        try:
            store = KeyStore(engine)
            await store.create_tables()
            if args.keys_command == "create":
                key, secret = await store.create(args.name, args.tenant, args.admin)
                return describe(key), secret
            if args.keys_command == "ls":
                return [describe(k) for k in await store.all(args.all)]
            return describe(await store.revoke(args.key_id))
        finally:
            await engine.dispose()

    return asyncio.run(act())


def _print(args: argparse.Namespace, result: Any) -> None:
    if args.keys_command == "create":
        key, secret = result
        if args.json:
            print(json.dumps({**key, "key": secret}, indent=2))
            return
        print(secret)
        role = "admin key" if key["admin"] else "key"
        print(
            f"{role} {key['key_id']} for tenant {key['tenant_id']!r}: the line above is the key, shown "
            "only this once. Use it as CORRAL_API_KEY or `Authorization: Bearer <key>`.",
            file=sys.stderr,
        )
    elif args.keys_command == "ls":
        rows = result
        if args.json:
            print(json.dumps(rows, indent=2))
            return
        table = [("KEY", "TENANT", "ROLE", "NAME", "STATE")]
        table += [(row["key_id"], row["tenant_id"], "admin" if row["admin"] else "-", row["name"],
                   f"revoked {row['revoked_at']}" if row["revoked_at"] else "active") for row in rows]
        widths = [max(len(line[i]) for line in table) for i in range(5)]
        for line in table:
            print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
    else:
        print(json.dumps(result, indent=2) if args.json else f"revoked {result['key_id']}")
