"""`corral pki init|issue`: the deployment's CA and certificates, for deployments other than
`corral up` (which makes its own in <data_dir>/pki). See corral.pki.

    corral pki init DIR                       CA + one certificate per role (as `corral up`)
    corral pki init --ca-only DIR             the CA alone (ca.crt, ca.key)
    corral pki issue --ca DIR --role executor --name executor-7 --host executor-7 --out OUT
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from corral.authz import ROLES
from corral.pki import CA, DEFAULT_HOSTS, PKIError, create_ca, ensure_deployment


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="pki_command", metavar="ACTION", required=True)
    init = commands.add_parser("init", help="create a CA (and, unless --ca-only, every role's certificate)")
    init.add_argument("directory", type=Path)
    init.add_argument("--ca-only", action="store_true", help="only the CA: issue certificates with `issue`")
    init.add_argument(
        "--executor-id", default=socket.gethostname(),
        help="executor id the executor's certificate names (default: this host's name)",
    )
    init.add_argument("--host", action="append", default=[], help="another DNS name or IP the services are reached at")

    issue = commands.add_parser("issue", help="issue one certificate from an existing CA")
    issue.add_argument("--ca", type=Path, required=True, help="directory holding ca.crt and ca.key")
    issue.add_argument("--role", choices=ROLES, required=True)
    issue.add_argument("--name", help="the identity's name: an executor's id (default: the role)")
    issue.add_argument("--out", type=Path, required=True, help="directory to write <role>.crt, <role>.key, ca.crt into")
    issue.add_argument(
        "--host", action="append", default=[],
        help="DNS name or IP the service is reached at (repeatable; localhost and 127.0.0.1 always)",
    )
    issue.add_argument("--owner", type=int, help="uid (and gid) to give the key and directory to")


def run(args: argparse.Namespace) -> int:
    try:
        if args.pki_command == "init":
            if args.ca_only:
                create_ca(args.directory)
            elif not ensure_deployment(args.directory, args.executor_id, [*DEFAULT_HOSTS, *args.host]):
                raise PKIError(f"{args.directory} already holds a CA and certificates")
            print(f"CA and certificates in {args.directory}")
        else:
            CA.load(args.ca).issue_into(
                args.out, args.role, args.name or args.role, ["localhost", "127.0.0.1", *args.host], owner=args.owner
            )
            print(f"{args.role} certificate for {args.name or args.role!r} in {args.out}")
    except (PKIError, OSError) as exc:
        print(f"corral pki {args.pki_command}: {exc}", file=sys.stderr)
        return 1
    return 0
