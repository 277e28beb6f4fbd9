"""Killing a container's processes without the Docker API: SIGKILL to its init, through a pidfd.

When the init of a PID namespace dies, the kernel kills every other process in it and waits
until all of them are gone before the init itself becomes a zombie (zap_pid_ns_processes); its
pidfd polls readable only then. So signalling the container's init and waiting on its pidfd
kills every process of the container in about a millisecond, where `docker kill` + `docker
wait` took ~150 ms of API calls that the task's end waited for. Docker learns of the exit by
itself; the container is removed later, off the task's path.

Only where the container's init is a process of this kernel that this executor sees: runc (not
gVisor, whose init lives in its own kernel) with Docker in our PID namespace. The pid (Docker's
inspection's, or read from the container's cgroup, which saves that API call) is trusted only
once a pidfd holds it: the process must then be the init of its own PID
namespace and sit in the container's cgroup, and the pidfd must still be unsignalled after those
checks (so the pid was not recycled in between). Anything else: None, and the caller kills the
container through the Docker API as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger()

# A killed container whose processes are not all gone by then (stuck in the kernel) is
# left to `docker kill` + `docker wait`.
KILL_WAIT_SECONDS = 10.0


class ContainerInit:
    """A pidfd of a running container's init process."""

    def __init__(self, pidfd: int) -> None:
        self.pidfd: int | None = pidfd

    async def kill(self) -> bool:
        """SIGKILLs the init and waits until every process of the container is gone. False
        when that could not be done here (the caller then asks Docker)."""
        pidfd = self.pidfd
        if pidfd is None:
            return False
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass  # already dead: the wait below returns at once
        except OSError as exc:
            log.warning("could not signal a container's init; asking Docker", error=str(exc))
            return False
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()

        def exited() -> None:
            if not gone.done():
                gone.set_result(None)

        loop.add_reader(pidfd, exited)
        try:
            async with asyncio.timeout(KILL_WAIT_SECONDS):
                await gone
        except TimeoutError:
            log.warning("a container's processes outlived its killed init; asking Docker")
            return False
        finally:
            loop.remove_reader(pidfd)
        return True

    def close(self) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None


def container_init(info: dict[str, Any], container_id: str) -> ContainerInit | None:
    """The init of a just-started container (`info`: its inspection), or None when this
    executor cannot safely signal it itself (see the module docstring)."""
    pid = (info.get("State") or {}).get("Pid") or 0
    if not isinstance(pid, int) or pid <= 0:
        return None
    return container_init_of(pid, container_id)


def init_from_cgroup(procs_files: list[Path], container_id: str) -> ContainerInit | None:
    """The init of a just-started container found among the processes of its cgroup (the
    `cgroup.procs` files of its directories), without asking Docker (an inspection per
    container); None when none of them passes the checks of the module docstring."""
    for path in procs_files:
        try:
            pids = [int(word) for word in path.read_text().split()]
        except (OSError, ValueError):
            continue
        for pid in pids:
            found = container_init_of(pid, container_id)
            if found is not None:
                return found
    return None


def container_init_of(pid: int, container_id: str) -> ContainerInit | None:
    """ContainerInit of `pid` once it is checked to be the container's init, else None."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None  # gone already, or not in our PID namespace
    try:
        ours = _is_container_init(pid, container_id) and not _exited(pidfd)
    except OSError:
        ours = False
    if not ours:
        os.close(pidfd)
        return None
    return ContainerInit(pidfd)


def _is_container_init(pid: int, container_id: str) -> bool:
    """Whether `pid` is pid 1 of its own namespace and in the container's cgroup."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        ns_pids = next((line.split()[1:] for line in f if line.startswith("NSpid:")), [])
    if len(ns_pids) < 2 or ns_pids[-1] != "1":
        return False
    with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
        return any(container_id in line.rsplit(":", 1)[-1] for line in f)


def _exited(pidfd: int) -> bool:
    import select

    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))
