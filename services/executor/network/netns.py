"""Named network namespaces of the executor's sandboxes (`ip netns`), and work done inside one.

A bubblewrap sandbox with network gets a namespace of its own, made by the executor (root). It
is owned either by the host's user namespace or (`add(name, owner_uid)`) by a user namespace of
its own owned by the unprivileged uid pasta runs as, so pasta needs no privilege on the host.
Either way nothing in the sandbox (which lives in a user namespace of its own, as another uid)
holds CAP_NET_ADMIN over it, so its nftables rules are out of the sandbox's reach.
Names carry the executor's prefix, so an executor starting again removes the namespaces a
crash left behind (as recover_task_dirs does for directories) and nobody else's.

Python 3.11 has no os.setns: sockets of the sandbox's resolver are made by a short-lived thread
that joins the namespace with libc's setns(2) (a thread's network namespace is its own), binds
them and ends; the sockets stay in the namespace they were made in.
"""

from __future__ import annotations

import contextlib
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
# The user namespaces that own sandboxes' network namespaces (add(owner_uid=...)), bound to a
# file of the same name as the network namespace's, so pasta can join both by path.
USERNS_DIR = Path("/run/corral-userns")
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2
OWNER_READY_TIMEOUT = 5.0

_libc = ctypes.CDLL(None, use_errno=True)
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


def drop_to(uid: int) -> list[str]:
    """The prefix that runs a command as `uid` (its own group, no others). setpriv changes ids
    after exec: subprocess's user=/group= would change them in a child forked beside gRPC's
    threads, which was seen to crash it (see the bubblewrap driver)."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


def userns_path(name: str) -> str:
    return str(USERNS_DIR / name)


def run_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"could not run ip {' '.join(args)}: {exc}") from exc
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def add(name: str, owner_uid: int | None = None) -> None:
    """Makes the namespace `name`, its loopback up (the sandbox's resolver listens there);
    with `owner_uid`, inside a new user namespace that uid owns (see _add_owned)."""
    if owner_uid is None:
        run_ip("netns", "add", name)
    else:
        _add_owned(name, owner_uid)
    try:
        run_ip("-n", name, "link", "set", "lo", "up")
    except BaseException:
        delete(name)
        raise


def _add_owned(name: str, uid: int) -> None:
    """A network namespace created by `uid` together with a user namespace of its own (so that
    user namespace, owned by uid, owns it), both kept by bind mounts: ip's for the network
    namespace, one under USERNS_DIR for the user namespace. A process of that uid (pasta) can
    then join them and configure the network without any privilege on the host; root (the
    executor) still can too, as the owner of every user namespace."""
    try:
        holder = subprocess.Popen(
            [*drop_to(uid), "unshare", "--user", "--net", "--", "cat"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
    except OSError as exc:
        raise NetnsError(f"cannot run unshare as uid {uid}: {exc}") from exc
    try:
        _wait_until_unshared(holder)
        run_ip("netns", "attach", name, str(holder.pid))
        try:
            USERNS_DIR.mkdir(mode=0o755, exist_ok=True)
            target = Path(userns_path(name))
            target.touch(mode=0o444)
            source = f"/proc/{holder.pid}/ns/user".encode()
            if _libc.mount(source, str(target).encode(), None, MS_BIND, None) != 0:
                errno = ctypes.get_errno()
                raise NetnsError(f"cannot keep the user namespace of {name}: {os.strerror(errno)}")
        except BaseException:
            delete(name)
            raise
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        try:
            holder.wait(COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
        if holder.stderr is not None:
            holder.stderr.close()


def _wait_until_unshared(holder: subprocess.Popen[bytes]) -> None:
    """Returns once `holder` lives in namespaces of its own (unshare has exec'd `cat`)."""
    ours = os.readlink("/proc/self/ns/user")
    deadline = time.monotonic() + OWNER_READY_TIMEOUT
    while True:
        try:
            if os.readlink(f"/proc/{holder.pid}/ns/user") != ours:
                return
        except OSError:
            pass
        if holder.poll() is not None:
            words = holder.stderr.read().decode(errors="replace").strip() if holder.stderr else ""
            raise NetnsError(f"unshare --user --net failed: {words or f'exit {holder.returncode}'}")
        if time.monotonic() > deadline:
            raise NetnsError(f"unshare did not make its namespaces within {OWNER_READY_TIMEOUT:g}s")
        time.sleep(0.0005)


def delete(name: str) -> None:
    run_ip("netns", "delete", name, check=False)
    owner = Path(userns_path(name))
    if owner.exists():
        _libc.umount2(str(owner).encode(), MNT_DETACH)
        owner.unlink(missing_ok=True)


def names() -> list[str]:
    try:
        return sorted(entry.name for entry in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def remove_stale(prefix: str) -> list[str]:
    """Deletes the namespaces named with `prefix` (left by an executor that did not stop),
    and the user namespaces that owned them."""
    stale = [name for name in names() if name.startswith(prefix)]
    for name in stale:
        delete(name)
    with contextlib.suppress(FileNotFoundError):
        for entry in USERNS_DIR.iterdir():
            if entry.name.startswith(prefix):
                delete(entry.name)
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
