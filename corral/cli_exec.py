"""`corral exec SANDBOX -- CMD...` and `corral cp`: a long-lived sandbox from a terminal.

`exec` runs the command in the sandbox's workspace (several words are argv, quoted as
`docker exec` would run them; a single word is a shell line: `corral exec SB -- 'ls | wc -l'`), prints its output live and exits with its exit code (124 when
it timed out, 1 when it ended without one). `cp` copies files and directories in or out: one
side is SANDBOX:PATH; directories travel as tar archives (the gateway's upload refuses entries
leading out of the target; a download is unpacked with tarfile's `data` filter).
"""

from __future__ import annotations

import argparse
import io
import os
import posixpath
import shlex
import sys
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

from corral.cli_client import EXIT_FAILED, EXIT_OK, UsageError, make_client, parse_env

if TYPE_CHECKING:
    from corral.sdk.sync import Sandbox

EXIT_TIMED_OUT = 124  # as timeout(1)


def add_exec(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sandbox_id", metavar="SANDBOX_ID")
    parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]",
                        help="the command and its arguments (after --)")
    parser.add_argument("-w", "--cwd", help="working directory (default: the workspace)")
    parser.add_argument("-e", "--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="kill it after this long")


def add_cp(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE", help="LOCAL_PATH or SANDBOX_ID:PATH")
    parser.add_argument("target", metavar="TARGET", help="SANDBOX_ID:PATH or LOCAL_PATH")


def exec(args: argparse.Namespace) -> int:  # `corral exec` (shadows the builtin here only)
    from corral.sdk.sync import Sandbox

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise UsageError("no command: corral exec SANDBOX_ID -- COMMAND [ARG...]")
    command = argv[0] if len(argv) == 1 else shlex.join(argv)
    with make_client(args) as client:
        sandbox = Sandbox(client, {"sandbox_id": args.sandbox_id}, owned=False)
        stream = sandbox.run_shell(command, stream=True, cwd=args.cwd, env=parse_env(args.env) or None,
                                   timeout=args.timeout)
        for chunk in stream:
            out = sys.stdout if chunk.stream == "stdout" else sys.stderr
            out.write(chunk.text)
            out.flush()
    result = stream.result
    if result is None:
        print("corral exec: the command's output ended without its exit", file=sys.stderr)
        return EXIT_FAILED
    if result.timed_out:
        print(f"corral exec: timed out{': ' + result.error if result.error else ''}", file=sys.stderr)
        return EXIT_TIMED_OUT
    if result.exit_code is None:
        print(f"corral exec: {result.error or 'the command did not run'}", file=sys.stderr)
        return EXIT_FAILED
    # A command killed by signal N reports -N; a shell says 128+N.
    return result.exit_code if result.exit_code >= 0 else 128 - result.exit_code


def split_remote(spec: str) -> tuple[str, str] | None:
    """SANDBOX_ID:PATH as (id, path); None for a local path (one with a '/' before any ':')."""
    head, sep, tail = spec.partition(":")
    if not sep or not head or "/" in head or head.startswith("."):
        return None
    return head, tail or "."


def cp(args: argparse.Namespace) -> int:
    from corral.sdk.sync import Sandbox

    source, target = split_remote(args.source), split_remote(args.target)
    if (source is None) == (target is None):
        raise UsageError("one side must be SANDBOX_ID:PATH and the other a local path")
    with make_client(args) as client:
        if target is not None:
            sandbox = Sandbox(client, {"sandbox_id": target[0]}, owned=False)
            copy_in(sandbox, Path(args.source), target[1])
        else:
            assert source is not None
            sandbox = Sandbox(client, {"sandbox_id": source[0]}, owned=False)
            copy_out(sandbox, source[1], Path(args.target))
    return EXIT_OK


def _remote_directory(sandbox: Sandbox, path: str) -> bool:
    from corral import errors

    try:
        return sandbox.files.stat(path).type == "directory"
    except errors.NotFound:
        return False


def copy_in(sandbox: Sandbox, local: Path, remote: str) -> None:
    """`local` (file or directory) to `remote`; into it, under its own name, when `remote` is
    an existing directory or ends with '/'."""
    if not local.exists():
        raise UsageError(f"no such file or directory: {local}")
    if remote.endswith("/") or _remote_directory(sandbox, remote):
        parent, name = remote, local.resolve().name
    else:
        parent, name = posixpath.dirname(remote) or ".", posixpath.basename(remote)
    if local.is_file():
        sandbox.write_file(posixpath.join(parent, name), local.read_bytes())
        return
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        # Links are left out (the gateway refuses them); files and directories keep their names.
        for root, dirs, files in os.walk(local):
            relative = Path(root).relative_to(local)
            archive.add(root, arcname=str(Path(name) / relative), recursive=False)
            for file in files:
                path = Path(root) / file
                if path.is_file() and not path.is_symlink():
                    archive.add(path, arcname=str(Path(name) / relative / file), recursive=False)
            dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]
    sandbox.files.upload(parent, buffer.getvalue())


def copy_out(sandbox: Sandbox, remote: str, local: Path) -> None:
    """`remote` (file or directory) to `local`; into it, under its own name, when `local` is an
    existing directory."""
    info = sandbox.files.stat(remote)  # NotFound names the path
    name = posixpath.basename(posixpath.normpath(remote)) or "workspace"
    destination = local / name if local.is_dir() else local
    if info.type != "directory":
        destination.write_bytes(sandbox.read_file(remote, binary=True))
        return
    archive = sandbox.files.download(remote)
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
        tar.extractall(destination, filter="data")  # nothing outside `destination`, no devices
