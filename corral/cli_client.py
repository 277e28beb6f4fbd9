"""What every client command shares: where the gateway is (--url / CORRAL_URL), the API key
(--api-key / CORRAL_API_KEY), the exit codes, and one way to report a failure (a line naming it,
never a traceback). Imports only the standard library at the top: the SDK comes with the first
call that needs it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.sdk.sync import Client

# httpx's own command line (httpx._main) pulls in click, rich and pygments when they are
# installed (a third of a second at every start); this process never runs it, so httpx is
# imported without it (httpx then offers a stub `main` saying how to install its CLI).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad input from the user: printed as one clear message, never a traceback."""


def add_connection_arguments(parser: argparse.ArgumentParser, top_level: bool = False) -> None:
    """--url and --api-key, before the command (`corral --url U run ...`) or after it."""
    # After the command they must not reset what was given before it: SUPPRESS keeps it.
    default = None if top_level else argparse.SUPPRESS
    parser.add_argument(
        "--url", default=default, metavar="URL",
        help="the gateway's URL (default: CORRAL_URL, else http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--api-key", default=default, metavar="KEY", help="the API key to send (default: CORRAL_API_KEY)"
    )


def make_client(args: argparse.Namespace) -> Client:
    from corral.sdk.sync import Client

    return Client(getattr(args, "url", None), getattr(args, "api_key", None))


def run_client_command(args: argparse.Namespace, command: Callable[[argparse.Namespace], int]) -> int:
    """Runs a client command; a failure is one line on stderr and exit code 2."""
    from corral import errors

    name = args.command
    try:
        return command(args)
    except UsageError as exc:
        print(f"corral {name}: {exc}", file=sys.stderr)
    except errors.Unavailable as exc:
        print(f"corral {name}: {exc} (is `corral up` running? --url or CORRAL_URL names the gateway)",
              file=sys.stderr)
    except errors.Unauthenticated as exc:
        print(f"corral {name}: UNAUTHENTICATED: {exc} (--api-key or CORRAL_API_KEY gives the key)",
              file=sys.stderr)
    except errors.CorralError as exc:
        print(f"corral {name}: {exc.code}: {exc.message}", file=sys.stderr)
    return EXIT_ERROR


def parse_env(pairs: list[str], flag: str = "--env") -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"{flag} expects NAME=VALUE, got {pair!r}")
        env[name] = value
    return env


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


def age(timestamp: str | None, now: float | None = None) -> str:
    """'3s', '5m', '2h', '4d' since an RFC 3339 time ('-' when there is none)."""
    if not timestamp:
        return "-"
    import time
    from datetime import datetime

    try:
        # Nanosecond fractions (the gateway's) are more than fromisoformat takes: cut to micro.
        head, _, rest = timestamp.rstrip("Z").partition(".")
        when = datetime.fromisoformat(head + ("." + rest[:6] if rest else "") + "+00:00").timestamp()
    except ValueError:
        return "-"
    seconds = max(0, int((time.time() if now is None else now) - when))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
