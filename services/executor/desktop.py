"""Starting a sandbox's desktop and Jupyter Lab, for any driver.

Both are started by sandbox/runtime/desktop.py (at /app/desktop.py inside), run as an ordinary
process step of the sandbox; what it starts outlives that step. Their unix sockets appear in
the sandbox's run directory, which the host sees as SandboxConfig.host_run_dir.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from services.executor.drivers.base import (
    RUN_DIR,
    WORKSPACE_DIR,
    ProcessRequest,
    Sandbox,
    SandboxError,
    StreamName,
)

LAUNCHER = ("/usr/bin/python3", "-I", "/app/desktop.py")
START_TIMEOUT_SECONDS = 90.0
SCREEN_SIZE = (1024, 768)


@dataclass(frozen=True)
class Desktop:
    display: str
    # gui.sock, vnc.sock, vnc-view.sock are here, made by the sandbox: reach them only through
    # corral/sandbox_socket.py.
    host_run_dir: Path


def _ignore(stream: StreamName, data: str) -> None:
    pass


async def _launch(sandbox: Sandbox, what: str, args: tuple[str, ...], cwd: str = "") -> dict[str, object]:
    request = ProcessRequest(
        kind="argv",
        argv=(*LAUNCHER, *args),
        timeout=START_TIMEOUT_SECONDS,
        env={"CORRAL_RUN_DIR": RUN_DIR},
        cwd=cwd,
    )
    result = await sandbox.run(request, _ignore)
    lines = result.stdout.strip().splitlines()
    try:
        reply: dict[str, object] = json.loads(lines[-1]) if lines else {}
    except ValueError:
        reply = {}
    if not result.ok or "error" in reply or not reply:
        reason = reply.get("error") or result.error or result.stderr.strip()[-800:] or f"exit {result.exit_code}"
        raise SandboxError(f"could not start {what} in the sandbox: {reason}")
    return reply


async def start_desktop(sandbox: Sandbox, host_run_dir: Path, cwd: str = "") -> Desktop:
    width, height = SCREEN_SIZE
    reply = await _launch(
        sandbox, "the desktop", ("desktop", "--width", str(width), "--height", str(height)), cwd
    )
    return Desktop(display=str(reply["display"]), host_run_dir=host_run_dir)


async def start_jupyter(sandbox: Sandbox, host_run_dir: Path, base_url: str, root: str = WORKSPACE_DIR) -> Path:
    await _launch(sandbox, "Jupyter Lab", ("jupyter", "--base-url", base_url, "--root", root), root)
    return host_run_dir / "jupyter.sock"
