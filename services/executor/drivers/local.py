"""A driver that ISOLATES NOTHING: the real agent as a plain host subprocess, for tests only.

    !!! Steps run as the executor's own user, on the host, with its filesystem, network and
    !!! processes in reach. There is no sandbox here at all. Never run untrusted code with it.

It exists so that the executor's step-loop policy (skip after a failure, continue_on_error,
timeouts, cancel) can be tested in milliseconds against the REAL agent (sandbox/runtime/agent.py)
and the real agent client (AgentSandbox), while isolation stays tested by the bubblewrap and
docker suites. It is deliberately not selectable through CORRAL_SANDBOX_DRIVER or Settings:
construct `LocalDriver(settings)` in a test and hand it to the runner.

The agent works in the host task directory (`config.host_task_dir`, also its HOME); the paths
the executor uses (`config.task_dir`, `/tasks/{task_id}`) are mapped to it and back. Steps that
name /tasks/... in their own commands see the host's /tasks, not their directory.
Everything the agent starts stays below it (it is made a child subreaper), and close() kills
all of that and waits until it is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import structlog

from corral.config import Settings
from services.executor.drivers.agent_sandbox import AgentSandbox
from services.executor.drivers.base import (
    SANDBOX_PATH,
    WORKSPACE_DIR,
    Sandbox,
    SandboxConfig,
    SandboxDriver,
    SandboxError,
)
from services.executor.drivers.transport import SubprocessTransport

log = structlog.get_logger()

# Makes the process a child subreaper (orphans of its steps re-parent to it, not to init, so
# close() finds them), then becomes the agent: `python -I -c SUBREAPER PYTHON AGENT`.
SUBREAPER = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER\n"
    "os.execv(sys.argv[1], [sys.argv[1], '-I', *sys.argv[2:]])\n"
)


class LocalDriver(SandboxDriver):
    """Sandboxes that are plain host processes (see the module docstring: no isolation)."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runtime_dir = Path(settings.runtime_dir).resolve()
        if not (self.runtime_dir / "agent.py").is_file():
            raise SandboxError(f"the sandbox runtime is missing: no agent.py in {self.runtime_dir}")

    async def create(self, config: SandboxConfig) -> Sandbox:
        if config.desktop or config.host_run_dir is not None:
            # desktop.py would start Xvfb, x11vnc... on the host itself.
            raise SandboxError("the local (unisolated, test-only) driver runs no desktop")
        sandbox = AgentSandbox(LocalTransport(config, self.runtime_dir / "agent.py"), config)
        return await sandbox.start_or_close()


class LocalTransport(SubprocessTransport):
    """The agent (or `command`, for tests of the client itself) as a host subprocess."""

    what = "the local agent"
    ready_timeout = 20.0

    def __init__(self, config: SandboxConfig, agent: Path, command: Sequence[str] | None = None) -> None:
        super().__init__(config)
        self.agent = agent
        self.command = list(command) if command is not None else None
        self._script_dir: str | None = None
        self._root = os.path.realpath(config.host_task_dir)

    async def start(self) -> None:
        self._script_dir = tempfile.mkdtemp(prefix="corral-local-agent-")
        argv = self.command or [sys.executable, "-I", "-c", SUBREAPER, sys.executable, str(self.agent)]
        try:
            await self._spawn(
                argv,
                cwd=self._root,
                env={
                    "PATH": SANDBOX_PATH,
                    "LANG": "C.UTF-8",
                    "HOME": self._root,
                    "CORRAL_AGENT_SCRIPT_DIR": self._script_dir,
                },
            )
        except OSError as exc:
            raise SandboxError(f"could not start the local agent: {exc}") from exc

    async def kill(self) -> None:
        await super().kill()
        if self._script_dir is not None:
            shutil.rmtree(self._script_dir, ignore_errors=True)

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        self._close_requests()
        # Everything below the agent first (stopped, then killed, until none is left), so
        # nothing re-parents away from it; then the agent.
        for _ in range(100):
            victims = _descendants(process.pid)
            if not victims:
                break
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                for pid in victims:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)
            await asyncio.sleep(0.005)
        await self._kill_process(process, "the local agent", pid=process.pid)

    def _died_message(self) -> str:
        code = self.process.returncode if self.process is not None else None
        message = f"the local agent ended unexpectedly (exit status {code})"
        detail = self._stderr_text()
        return f"{message}: {detail[-1000:]}" if detail else message

    # The agent sees the host directory where the sandbox would see config.task_dir (and the
    # workspace's where it would see WORKSPACE_DIR).

    def _mappings(self) -> list[tuple[str, str]]:
        """(sandbox path, host path), most specific first."""
        mappings = [(self.config.task_dir, self._root)]
        if self.config.host_workspace_dir is not None:
            mappings.insert(0, (WORKSPACE_DIR, os.path.realpath(self.config.host_workspace_dir)))
        return mappings

    def agent_path(self, path: str) -> str:
        for inside, host in self._mappings():
            if path == inside or path.startswith(inside + "/"):
                return host + path[len(inside) :]
        return path

    def sandbox_path(self, path: str) -> str:
        for inside, host in self._mappings():
            if path == host or path.startswith(host + "/"):
                return inside + path[len(host) :]
        return path


def _descendants(root: int) -> set[int]:
    """Every live process below `root` (by parent pid)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
