"""`corral keys create | ls | revoke`: API keys, over the scheduler's KeyService (with an admin
key in CORRAL_API_KEY), or with `--database` straight in the scheduler's database.

`--database` is how the first admin key is made: run where the scheduler runs (the same
CORRAL_DATA_DIR or CORRAL_SCHEDULER_DATABASE_URL; in compose, `docker-compose exec scheduler`),
it needs no key, only what already gives the run of the database.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from corral.api_keys import metadata_for
from corral.client import typed_errors
from corral.config import Settings
from corral.grpc_server import channel
from corral.v1 import keys_pb2, keys_pb2_grpc


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
        sub.add_argument("--scheduler", default=None, help="scheduler host:port (default CORRAL_SCHEDULER_ADDRESS)")


def describe(key: keys_pb2.ApiKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "name": key.name,
        "tenant_id": key.tenant_id,
        "admin": key.admin,
        "created_at": key.created_at.ToJsonString(),
        "revoked_at": key.revoked_at.ToJsonString() if key.HasField("revoked_at") else None,
    }


async def run(args: argparse.Namespace, scheduler: str) -> int:
    if args.database:
        result = await _on_database(args)
    else:
        with typed_errors():
            result = await _over_grpc(args, scheduler)
    _print(args, result)
    return 0


async def _over_grpc(args: argparse.Namespace, scheduler: str) -> Any:
    settings = Settings()
    key = metadata_for(settings.api_key)
    async with channel(scheduler, settings, "admin") as chan:
        stub = keys_pb2_grpc.KeyServiceStub(chan)
        if args.keys_command == "create":
            request = keys_pb2.CreateKeyRequest(name=args.name, tenant_id=args.tenant, admin=args.admin)
            reply = await stub.CreateKey(request, metadata=key)
            return reply.key, reply.secret
        if args.keys_command == "ls":
            listing = await stub.ListKeys(keys_pb2.ListKeysRequest(include_revoked=args.all), metadata=key)
            return list(listing.keys)
        revoked = await stub.RevokeKey(keys_pb2.RevokeKeyRequest(key_id=args.key_id), metadata=key)
        return revoked.key


async def _on_database(args: argparse.Namespace) -> Any:
    from corral.db import create_engine
    from services.scheduler.key_store import KeyStore

    engine = create_engine(Settings().database_url("scheduler"))
    try:
        store = KeyStore(engine)
        await store.create_tables()
        if args.keys_command == "create":
            return await store.create(args.name, args.tenant, args.admin)
        if args.keys_command == "ls":
            return await store.all(args.all)
        return await store.revoke(args.key_id)
    finally:
        await engine.dispose()


def _print(args: argparse.Namespace, result: Any) -> None:
    if args.keys_command == "create":
        key, secret = result
        if args.json:
            print(json.dumps({**describe(key), "key": secret}, indent=2))
            return
        print(secret)
        role = "admin key" if key.admin else "key"
        print(
            f"{role} {key.key_id} for tenant {key.tenant_id!r}: the line above is the key, shown "
            "only this once. Use it as CORRAL_API_KEY or `Authorization: Bearer <key>`.",
            file=sys.stderr,
        )
    elif args.keys_command == "ls":
        rows = [describe(key) for key in result]
        if args.json:
            print(json.dumps(rows, indent=2))
            return
        for row in rows:
            state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
            admin = "admin" if row["admin"] else "-"
            print(f"{row['key_id']}  {row['tenant_id']:<16} {admin:<6} {row['name']:<16} {state}")
    else:
        print(json.dumps(describe(result), indent=2) if args.json else f"revoked {result.key_id}")
