"""Anthropic's `bash` tool: one persistent bash per sandbox (and caller), `restart` for a new one.

The shell is a background command of the sandbox with its stdin kept open; each call writes
the command to it, with its output sent to a file (so the shell's own output, bounded like
every command's, only carries a short end marker per call), then reads the file back. State
(cwd, variables, functions, background jobs) lives on in the shell between calls. A call that
has not ended after TIMEOUT_SECONDS gets Anthropic's reference wording, and the shell is
killed: the next call starts a new one.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from gateway.computer_use.ops import SandboxOps
from gateway.computer_use.results import ToolInputError, text

TIMEOUT_SECONDS = 120.0
# Output returned per call; the rest is cut, saying so.
MAX_OUTPUT_BYTES = 64 * 1024
SHELL = "exec bash --noprofile --norc 2>&1"

Owner = tuple[str, tuple[tuple[str, str], ...]]
_sessions: dict[Owner, str] = {}
_locks: dict[Owner, asyncio.Lock] = {}


async def _session(ops: SandboxOps) -> str:
    command_id = _sessions.get(ops.owner)
    if command_id is not None and await ops.running(command_id):
        return command_id
    command_id = await ops.start(SHELL)
    _sessions[ops.owner] = command_id
    return command_id


async def _end(ops: SandboxOps) -> None:
    command_id = _sessions.pop(ops.owner, None)
    if command_id is not None:
        try:
            await ops.kill(command_id)
        except Exception:  # it ended already
            pass


async def _marker_line(ops: SandboxOps, command_id: str, marker: str) -> str | None:
    """The shell's `marker STATUS` line once printed; None when the shell ended first."""
    seen = ""
    async for event in ops.watch(command_id):
        kind = event.WhichOneof("event")
        if kind == "output":
            seen += event.output.data
            at = seen.find(marker + " ")
            if at >= 0 and "\n" in seen[at:]:
                return seen[at:].split("\n", 1)[0]
            seen = seen[-4096:]  # a marker cut between two chunks is still found
        elif kind == "exit":
            return None
    return None


MAX_SESSIONS = 10_000


def _lock(owner: Owner) -> asyncio.Lock:
    if len(_locks) >= MAX_SESSIONS:
        # Forget the idle ones (sandboxes long gone, mostly); their shells end with their sandbox.
        for key in [k for k, lock in _locks.items() if not lock.locked()]:
            _locks.pop(key)
            _sessions.pop(key, None)
    return _locks.setdefault(owner, asyncio.Lock())


async def run(ops: SandboxOps, params: dict[str, Any]) -> list[dict[str, Any]]:
    lock = _lock(ops.owner)
    async with lock:
        if params.get("restart"):
            await _end(ops)
            await _session(ops)
            return [text("tool has been restarted.")]
        command = params.get("command")
        if not isinstance(command, str) or not command.strip():
            raise ToolInputError("no command provided: give `command` (a bash command line), or restart: true")
        command_id = await _session(ops)
        marker = f"__corral_bash_{secrets.token_hex(8)}__"
        out = f"/tmp/.corral-bash-{marker}.out"
        # In braces: the command runs in the shell itself (cd, export... stay); its stdin is
        # /dev/null so that it cannot read the next calls.
        script = f"{{\n{command}\n}} >{out} 2>&1 </dev/null\nprintf '\\n%s %s\\n' {marker} \"$?\"\n"
        await ops.stdin(command_id, script.encode())
        try:
            line = await asyncio.wait_for(_marker_line(ops, command_id, marker), TIMEOUT_SECONDS)
        except TimeoutError:
            await _end(ops)
            raise ToolInputError(
                f"timed out: bash has not returned in {TIMEOUT_SECONDS:g} seconds and must be restarted"
            ) from None
        if line is None:
            _sessions.pop(ops.owner, None)
            output = await _output(ops, out)
            return [text(output + ("\n" if output else "") + "bash exited; the next call starts a new shell.")]
        output = await _output(ops, out)
        status = line.split()[-1]
        return [text(output if status == "0" else f"{output}\n(exit code {status})".lstrip("\n"))]


async def _output(ops: SandboxOps, path: str) -> str:
    try:
        data, size = await ops.read(path, MAX_OUTPUT_BYTES)
    except Exception:
        return ""
    finally:
        try:
            await ops.remove(path)
        except Exception:
            pass
    output = data.decode("utf-8", "replace").rstrip("\n")
    if size > len(data):
        output += f"\n<response clipped: {size - len(data)} more bytes of output>"
    return output
