"""Runs a set of local service processes: start in stages, wait until ready, stop cleanly.

`corral up` builds on this; it knows nothing about Corral itself, so it can be tested with
any command. Each child runs in its own session (process group) so a Ctrl-C at the terminal
reaches only the supervisor, which then stops children in reverse start order: SIGTERM,
wait, SIGKILL — and finally kills any descendant still alive so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

ReadinessProbe = Callable[[], Awaitable[bool]]

TAIL_LINES = 25


class StartupError(Exception):
    """A service did not become ready; the message names it and says why."""


@dataclass
class ServiceSpec:
    name: str
    argv: list[str]
    ready: ReadinessProbe
    env: dict[str, str] | None = None


@dataclass
class RunningService:
    spec: ServiceSpec
    process: asyncio.subprocess.Process
    log_path: Path
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    pump: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def describe_exit(self) -> str:
        code = self.process.returncode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        lines = "\n".join(f"    {line}" for line in self.tail) or "    (no output)"
        return f"{self.name} exited ({how}); last output (full log: {self.log_path}):\n{lines}"


async def _exit_of(process: asyncio.subprocess.Process) -> int:
    """Waits for the process to exit.

    Not `process.wait()`: before Python 3.12 that also waits until every holder of the
    output pipe closes it, and a service's children (sandboxes) inherit it.
    """
    while process.returncode is None:  # noqa: ASYNC110 (no event to wait on)
        await asyncio.sleep(0.05)
    return process.returncode


def _descendants(root_pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every live descendant of `root_pid`, read from /proc."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        ppid, start_time = int(fields[1]), fields[19]
        children.setdefault(ppid, []).append((int(entry), start_time))
    found: list[tuple[int, str]] = []
    stack = [root_pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child[0])
    return found


def _alive(pid: int, start_time: str) -> bool:
    """Whether `pid` is still the process that started at `start_time` (zombies count as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] == start_time and fields[0] != "Z"


async def _kill_all(processes: list[tuple[int, str]], timeout: float = 5.0) -> None:
    """SIGKILLs each (pid, start time) still alive and waits, bounded, until they are gone."""
    for pid, start_time in processes:
        if _alive(pid, start_time):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while any(_alive(*p) for p in processes) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)


class Supervisor:
    def __init__(
        self,
        log_dir: Path,
        echo: TextIO | None = sys.stdout,
        start_timeout: float = 60.0,
        stop_grace: float = 10.0,
    ) -> None:
        self.log_dir = log_dir
        self.echo = echo
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.services: list[RunningService] = []
        self._width = 9

    async def start_stage(self, specs: Sequence[ServiceSpec]) -> None:
        """Starts `specs` together and waits until each is ready; raises StartupError if not."""
        self._width = max([self._width, *(len(s.name) for s in specs)])
        started = [await self._spawn(spec) for spec in specs]
        waits = [asyncio.ensure_future(self._wait_ready(s)) for s in started]
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_EXCEPTION)
        for future in pending:  # one failed: no point waiting for the others
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for future in waits:
            error = future.exception() if future in done else None
            if error is not None:
                raise error

    async def _spawn(self, spec: ServiceSpec) -> RunningService:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{spec.name}.log"
        try:
            process = await asyncio.create_subprocess_exec(
                *spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=spec.env,
                start_new_session=True,
            )
        except OSError as exc:
            raise StartupError(f"{spec.name} could not be started: {exc}") from exc
        service = RunningService(spec, process, log_path)
        service.pump = asyncio.create_task(self._pump_output(service))
        self.services.append(service)
        return service

    async def _pump_output(self, service: RunningService) -> None:
        """Copies the child's output to its log file and, prefixed with its name, to `echo`."""
        assert service.process.stdout is not None
        prefix = f"{service.name:<{self._width}} | "
        fd = os.open(service.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as log_file:
            while True:
                raw = await service.process.stdout.readline()
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\n")
                service.tail.append(line)
                log_file.write(line + "\n")
                log_file.flush()
                if self.echo is not None:
                    try:
                        self.echo.write(prefix + line + "\n")
                        self.echo.flush()
                    except (BrokenPipeError, ValueError):  # our stdout went away: keep the files
                        self.echo = None

    async def _wait_ready(self, service: RunningService) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        exited = asyncio.ensure_future(_exit_of(service.process))
        try:
            while True:
                if exited.done():
                    await self._drain(service)
                    raise StartupError(f"{service.name} failed to start: {service.describe_exit()}")
                try:
                    if await asyncio.wait_for(service.spec.ready(), timeout=5):
                        return
                except (TimeoutError, OSError):
                    pass
                if loop.time() > deadline:
                    raise StartupError(
                        f"{service.name} was not ready after {self.start_timeout:.0f}s; "
                        f"last output (full log: {service.log_path}):\n"
                        + ("\n".join(f"    {line}" for line in service.tail) or "    (no output)")
                    )
                await asyncio.wait({exited}, timeout=0.1)
        finally:
            if not exited.done():
                exited.cancel()

    async def _drain(self, service: RunningService) -> None:
        """Lets the output pump finish so the tail holds the child's last words."""
        if service.pump is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(service.pump), timeout=2)

    async def wait_for_exit(self) -> RunningService:
        """Returns the first service that exits."""
        waits = {asyncio.ensure_future(_exit_of(s.process)): s for s in self.services}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in waits:
                future.cancel()
        service = waits[next(iter(done))]
        await self._drain(service)
        return service

    async def stop_all(self) -> None:
        """Stops services in reverse start order; kills what does not stop in time."""
        for service in reversed(self.services):
            await self._stop(service)
        self.services.clear()

    async def _stop(self, service: RunningService) -> None:
        process = service.process
        descendants = _descendants(process.pid)
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(_exit_of(process), timeout=self.stop_grace)
            except TimeoutError:
                self._say(f"{service.name} did not stop within {self.stop_grace:.0f}s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await _exit_of(process)
        # Whatever the service started and left behind (in its group or not) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        await _kill_all(descendants + _descendants(process.pid))
        await self._drain(service)
        if service.pump is not None:
            service.pump.cancel()

    def _say(self, message: str) -> None:
        print(f"corral: {message}", file=sys.stderr, flush=True)
