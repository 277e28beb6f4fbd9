"""Named network namespaces of the executor's sandboxes (`ip netns`), and work done inside one.

A bubblewrap sandbox with network gets a namespace of its own, made by the executor (root) and
so owned by the host's user namespace: nothing in the sandbox (which lives in a user namespace
of its own) holds CAP_NET_ADMIN over it, so its nftables rules are out of the sandbox's reach.
Names carry the executor's prefix, so an executor starting again removes the namespaces a
crash left behind (as recover_task_dirs does for directories) and nobody else's.

Python 3.11 has no os.setns: sockets of the sandbox's resolver are made by a short-lived thread
that joins the namespace with libc's setns(2) (a thread's network namespace is its own), binds
them and ends; the sockets stay in the namespace they were made in.
"""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from corral.network_rules import IPAddress

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
COMMAND_TIMEOUT = 30.0

T = TypeVar("T")


class NetnsError(RuntimeError):
    """A network namespace could not be made, entered or configured."""


def executor_prefix(executor_id: str) -> str:
    """The start of every namespace name of this executor (its id hashed: ids may hold any
    character, names must be short and plain)."""
    return f"corral-sb-{hashlib.sha256(executor_id.encode()).hexdigest()[:8]}-"


def netns_path(name: str) -> str:
    return str(NETNS_DIR / name)


def run_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"could not run ip {' '.join(args)}: {exc}") from exc
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def add(name: str) -> None:
    """Makes the namespace `name`, its loopback up (the sandbox's resolver listens there)."""
    run_ip("netns", "add", name)
    try:
        run_ip("-n", name, "link", "set", "lo", "up")
    except BaseException:
        delete(name)
        raise


def delete(name: str) -> None:
    run_ip("netns", "delete", name, check=False)


def names() -> list[str]:
    try:
        return sorted(entry.name for entry in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def remove_stale(prefix: str) -> list[str]:
    """Deletes the namespaces named with `prefix` (left by an executor that did not stop)."""
    stale = [name for name in names() if name.startswith(prefix)]
    for name in stale:
        delete(name)
    return stale


def host_addresses() -> list[IPAddress]:
    """Every address of the host's interfaces (`ip -j addr`): never reachable from a sandbox."""
    done = run_ip("-j", "addr", "show")
    found: set[IPAddress] = set()
    for link in json.loads(done.stdout or "[]"):
        for info in link.get("addr_info", []):
            try:
                found.add(ipaddress.ip_address(str(info.get("local", "")).split("%")[0]))
            except ValueError:
                continue
    return sorted(found, key=lambda a: (a.version, int(a)))


_libc = ctypes.CDLL(None, use_errno=True)


def call_inside(name: str, work: Callable[[], T]) -> T:
    """Runs `work` in a new thread that joined the namespace `name`; returns what it returned
    (raises what it raised). The thread ends after: no pooled thread is left in the namespace."""
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise NetnsError(f"cannot enter network namespace {name}: {os.strerror(errno)}")
            finally:
                os.close(fd)
            result.append(work())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def _has_default_route() -> bool:
    # /proc/thread-self/net is the calling thread's namespace (call_inside's).
    with open("/proc/thread-self/net/route", encoding="ascii") as routes:
        if any(line.split()[1:2] == ["00000000"] for line in list(routes)[1:]):
            return True
    try:
        with open("/proc/thread-self/net/ipv6_route", encoding="ascii") as routes6:
            return any(line.split()[:2] == ["0" * 32, "00"] for line in routes6)
    except FileNotFoundError:
        return False


def wait_for_default_route(name: str, timeout: float, alive: Callable[[], bool]) -> None:
    """Returns once the namespace has a default route (pasta configured it); raises NetnsError
    after `timeout` or as soon as `alive()` says the configuring process ended."""

    def wait() -> None:
        deadline = time.monotonic() + timeout
        while not _has_default_route():
            if not alive():
                raise NetnsError("pasta ended before configuring the sandbox's network")
            if time.monotonic() > deadline:
                raise NetnsError(f"pasta did not configure the sandbox's network within {timeout:g}s")
            time.sleep(0.002)

    call_inside(name, wait)
