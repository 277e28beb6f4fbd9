"""`corral mcp`: the MCP server (corral/mcp_server.py), loaded only when asked for."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from corral.cli_client import add_connection_arguments

    add_connection_arguments(parser)
    parser.add_argument("--http", action="store_true",
                        help="serve streamable HTTP at http://HOST:PORT/mcp (clients send their API key as Bearer)")
    parser.add_argument("--host", default="127.0.0.1", help="with --http: the address to listen on")
    parser.add_argument("--port", type=int, default=8765, help="with --http: the port (default 8765)")


def run(args: argparse.Namespace) -> int:
    try:
        from corral import mcp_server
    except ImportError as exc:
        print(f"corral mcp: needs the MCP SDK ({exc.name} is not installed): pip install 'corral[mcp]'")
        return 2

    mcp_server.serve(getattr(args, "url", None), args.http, args.host, args.port, getattr(args, "api_key", None))
    return 0
