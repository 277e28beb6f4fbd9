"""Cgroups that make a sandbox's limits bound the host: memory and pids for the sandbox as a
whole, and a pid budget for all of one executor's sandboxes together.

    <the executor's own cgroup>/corral-<executor id>/     pids.max = the executor's budget
        sandbox-<random>/                                 memory limit, pids.max = the task's

Both cgroup versions: v2 (one unified hierarchy: the directories above, controllers enabled
through cgroup.subtree_control) and v1 (one hierarchy per controller: the same names under
/sys/fs/cgroup/memory/... and /sys/fs/cgroup/pids/...). Nothing else is used, so no library:
the available ones handle v1 only or are unmaintained.

When no such tree can be made (not root and no delegated v2 subtree, a read-only cgroupfs, a
controller missing) `ExecutorCgroups.create` says why; drivers then keep per-process rlimits
and report that (SandboxDriver.limits_description), never silently.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import structlog

from corral.config import Settings

log = structlog.get_logger()

MIB = 1024 * 1024
CONTROLLERS = ("memory", "pids")
SANDBOX_PREFIX = "sandbox-"
# v2's "no internal processes" rule: an executor alone in a cgroup moves itself down here so
# that the cgroup may hand controllers to its children.
V2_LEAF = "corral-executor"
# Pids a sandbox needs to start (bwrap, its init, the agent and its threads; tini in a container).
SANDBOX_START_PIDS = 8


class CgroupUnavailable(Exception):
    """No cgroup tree can be made here; the message says why."""


@dataclass(frozen=True)
class Cgroup:
    """One cgroup: its directory in each hierarchy (v2: the same directory for both)."""

    version: int
    dirs: dict[str, Path]  # controller -> directory

    @property
    def paths(self) -> list[Path]:
        return sorted(set(self.dirs.values()))

    @property
    def procs_files(self) -> list[str]:
        """The cgroup.procs files a process writes its pid into to join this cgroup."""
        return [str(path / "cgroup.procs") for path in self.paths]

    def child(self, name: str, parent_of_more: bool = False) -> Cgroup:
        """Makes (or reuses) the child cgroup `name`. `parent_of_more`: it will have children
        of its own with the controllers (v2 then keeps processes out of it)."""
        child = Cgroup(self.version, {c: d / name for c, d in self.dirs.items()})
        for path in child.paths:
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o755)
        if self.version == 2 and parent_of_more:
            _write(child.dirs["memory"] / "cgroup.subtree_control", "+memory +pids")
        return child

    def set_limits(self, memory_mb: int, max_processes: int) -> None:
        """Memory (no swap on top) and pids for all processes in the cgroup together; a 0
        leaves that limit as it is. Raises OSError."""
        if max_processes:
            _write(self.dirs["pids"] / "pids.max", str(max_processes))
        if not memory_mb:
            return
        memory = self.dirs["memory"]
        if self.version == 2:
            _write(memory / "memory.max", str(memory_mb * MIB))
            with contextlib.suppress(FileNotFoundError):  # no swap accounting: no swap to limit
                _write(memory / "memory.swap.max", "0")
            return
        # v1: memory+swap (memsw) must stay >= memory, so the order depends on the direction.
        files = [memory / "memory.limit_in_bytes"]
        if (memory / "memory.memsw.limit_in_bytes").exists():
            files.append(memory / "memory.memsw.limit_in_bytes")
        current = int(files[0].read_text())
        for path in files if memory_mb * MIB <= current else reversed(files):
            _write(path, str(memory_mb * MIB))

    def reached_own_pids_max(self) -> bool:
        """Whether its processes ever numbered its own pids.max (pids.peak): when a fork was
        refused without that, a parent's limit (the executor's budget) refused it."""
        try:
            limit = _read(self.dirs["pids"] / "pids.max").strip()
            return limit != "max" and int(_read(self.dirs["pids"] / "pids.peak")) >= int(limit)
        except (CgroupUnavailable, ValueError):
            return True  # no pids.peak (older kernels): assume the sandbox's own limit

    def counters(self) -> dict[str, int]:
        """How often the kernel OOM-killed a process here, and how often a fork hit pids.max
        (the keys of the agent's limit_events)."""
        counters: dict[str, int] = {}
        memory_file = "memory.events" if self.version == 2 else "memory.oom_control"
        with contextlib.suppress(CgroupUnavailable, ValueError):
            counters["oom_kill"] = _keyed(self.dirs["memory"] / memory_file, "oom_kill")
        with contextlib.suppress(CgroupUnavailable, ValueError):
            counters["pids_max"] = _keyed(self.dirs["pids"] / "pids.events", "max")
        return counters

    def remove(self) -> None:
        """Kills whatever is still in the cgroup (normally nothing: its sandbox ended) and
        removes it. Bounded; a cgroup that cannot go is logged and left for the next start."""
        for path in self.paths:
            _remove_tree(path)


class ExecutorCgroups:
    """The executor's parent cgroup; one child per sandbox."""

    def __init__(self, parent: Cgroup, max_pids: int) -> None:
        self.parent = parent
        self.max_pids = max_pids

    @classmethod
    def create(cls, executor_id: str, max_pids: int, at_root: bool = False) -> ExecutorCgroups:
        """Makes (or takes over, removing the sandboxes a crashed run left) the executor's
        parent cgroup. `at_root`: at the top of each hierarchy (where dockerd, not this
        process, places containers) instead of under this process's own cgroup.
        Raises CgroupUnavailable."""
        base = _base_cgroup(at_root)
        name = "corral-" + re.sub(r"[^A-Za-z0-9_.-]", "_", executor_id)
        try:
            parent = base.child(name, parent_of_more=True)
            for stale in _children(parent):
                log.warning("removing a sandbox cgroup a previous run left", cgroup=str(stale.paths[0]))
                stale.remove()
            parent.set_limits(0, max_pids)
        except OSError as exc:
            raise CgroupUnavailable(
                f"cannot make the executor's cgroup under {base.paths[0]}: {exc}"
            ) from exc
        return cls(parent, max_pids)

    def sandbox(self, memory_mb: int, max_processes: int) -> Cgroup:
        """A new cgroup for one sandbox, with its limits. Raises OSError."""
        cgroup = self.parent.child(SANDBOX_PREFIX + uuid.uuid4().hex[:16])
        try:
            cgroup.set_limits(memory_mb, max_processes)
        except BaseException:
            cgroup.remove()
            raise
        return cgroup

    def nearly_used_up(self) -> bool:
        """Whether too few pids are left in the budget to start one more sandbox."""
        try:
            current = int(_read(self.parent.dirs["pids"] / "pids.current"))
        except (CgroupUnavailable, ValueError):
            return False
        return self.max_pids - current < SANDBOX_START_PIDS

    def remove(self) -> None:
        """Removes the parent (and any sandbox cgroup left in it), when the executor stops."""
        self.parent.remove()

    def describe(self) -> str:
        """What bounds the host, in words (the executor's status reports it)."""
        return (
            f"cgroup v{self.parent.version}: memory and pids per sandbox, executor budget "
            f"{self.max_pids} pids ({self.parent.paths[0]})"
        )


def make_executor_cgroups(
    settings: Settings, executor_id: str, at_root: bool = False
) -> tuple[ExecutorCgroups | None, str]:
    """The executor's parent cgroup and the words for what bounds the host; (None, why not)
    where no cgroup can be made."""
    if not settings.sandbox_cgroups:
        reason = "sandbox cgroups are turned off (CORRAL_SANDBOX_CGROUPS=false)"
    else:
        max_pids = settings.executor_max_pids or default_max_pids()
        try:
            cgroups = ExecutorCgroups.create(executor_id, max_pids, at_root)
        except CgroupUnavailable as exc:
            reason = str(exc)
        else:
            log.info("sandbox limits", limits=cgroups.describe())
            return cgroups, cgroups.describe()
    return None, reason


def default_max_pids() -> int:
    """A budget well below the host's pid space: a quarter of pid_max, at most 8192."""
    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
        threads_max = int(Path("/proc/sys/kernel/threads-max").read_text())
    except (OSError, ValueError):
        return 4096
    return max(64, min(8192, pid_max // 4, threads_max // 4))


def rlimit_fallback(reason: str) -> str:
    """The words for a host whose sandboxes keep per-process rlimits only."""
    return (
        "per-process rlimits only (memory per process, processes per uid; nothing bounds a "
        f"sandbox as a whole or the executor's sandboxes together): {reason}"
    )


# --- finding this process's cgroups -------------------------------------------------------------


def _base_cgroup(at_root: bool) -> Cgroup:
    """This process's own cgroup (or the hierarchies' tops) as a Cgroup with memory and pids."""
    mounts = _cgroup_mounts()
    own = _own_cgroups()
    v1 = {c: mounts[c] for c in CONTROLLERS if c in mounts}
    if len(v1) == len(CONTROLLERS):
        dirs = {
            controller: _under_mount(point, root, "/" if at_root else own.get(controller, "/"))
            for controller, (point, root) in v1.items()
        }
        return Cgroup(1, dirs)
    if "" not in mounts:
        raise CgroupUnavailable("no cgroup v2 hierarchy and no v1 memory and pids hierarchies are mounted")
    mount_point, mount_root = mounts[""]
    path = _under_mount(mount_point, mount_root, "/" if at_root else own.get("", "/"))
    controllers = _read(path / "cgroup.controllers").split()
    missing = [c for c in CONTROLLERS if c not in controllers]
    if missing:
        raise CgroupUnavailable(f"the cgroup v2 hierarchy gives {path} no {' or '.join(missing)} controller")
    _delegate_v2(path, at_root)
    return Cgroup(2, {c: path for c in CONTROLLERS})


def _delegate_v2(path: Path, at_root: bool) -> None:
    """Lets `path`'s children have memory and pids controllers (cgroup.subtree_control),
    moving this process into a leaf below it first when it is alone there."""
    enabled = _read(path / "cgroup.subtree_control").split()
    if all(c in enabled for c in CONTROLLERS):
        return
    try:
        _write(path / "cgroup.subtree_control", "+memory +pids")
        return
    except OSError as exc:
        if exc.errno != errno.EBUSY or at_root:
            raise CgroupUnavailable(f"cannot enable memory and pids controllers in {path}: {exc}") from exc
    # EBUSY: processes live in `path`. Only ours (this session's: `corral up` and the services
    # it started) may be moved down into a leaf.
    procs = {int(p) for p in _read(path / "cgroup.procs").split()}
    ours = {pid for pid in procs if _session(pid) == os.getsid(0)} | {os.getpid()}
    if procs - ours:
        raise CgroupUnavailable(
            f"{path} holds other processes ({len(procs - ours)}), so it cannot hand memory and pids "
            "controllers to sandboxes: run the executor in a cgroup of its own with delegation "
            "(systemd: Delegate=yes, or `systemd-run --user --scope -p Delegate=yes corral up`)"
        )
    try:
        leaf = path / V2_LEAF
        with contextlib.suppress(FileExistsError):
            leaf.mkdir(mode=0o755)
        for pid in ours:
            with contextlib.suppress(ProcessLookupError):
                _write(leaf / "cgroup.procs", str(pid))
        _write(path / "cgroup.subtree_control", "+memory +pids")
    except OSError as exc:
        raise CgroupUnavailable(f"cannot enable memory and pids controllers in {path}: {exc}") from exc


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _cgroup_mounts() -> dict[str, tuple[Path, str]]:
    """Controller ("" for v2) -> (mount point, the cgroup the mount shows), first mount wins."""
    found: dict[str, tuple[Path, str]] = {}
    for line in _read(Path("/proc/self/mountinfo")).splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mount_point = _unescape(fields[3]), Path(_unescape(fields[4]))
        if tail[0] == "cgroup2":
            found.setdefault("", (mount_point, root))
        elif tail[0] == "cgroup":
            for option in tail[2].split(","):
                if option in CONTROLLERS:
                    found.setdefault(option, (mount_point, root))
    return found


def _own_cgroups() -> dict[str, str]:
    """Controller ("" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    own: dict[str, str] = {}
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path
    return own


def _under_mount(mount_point: Path, mount_root: str, path: str) -> Path:
    """Where cgroup `path` is below a mount that shows cgroup `mount_root`."""
    relative = os.path.relpath(path, mount_root) if mount_root != "/" else path.lstrip("/")
    if relative.startswith(".."):
        raise CgroupUnavailable(f"this process's cgroup {path} is not visible under {mount_point}")
    return mount_point / relative if relative not in ("", ".") else mount_point


def _remove_tree(path: Path) -> None:
    """Removes the cgroup directory `path` and those below it, killing what is left in them."""
    with contextlib.suppress(FileNotFoundError):
        for child in [p for p in path.iterdir() if p.is_dir()]:
            _remove_tree(child)
    for attempt in range(50):
        with contextlib.suppress(OSError, ValueError):
            for pid in (int(line) for line in (path / "cgroup.procs").read_text().split()):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                log.warning("could not remove a cgroup", cgroup=str(path), error=str(exc))
                return
        time.sleep(0.001 * min(2**attempt, 100))  # killed or exiting processes take a moment to leave
    log.warning("a cgroup stayed busy; it is removed at the executor's next start", cgroup=str(path))


def _children(parent: Cgroup) -> list[Cgroup]:
    names: set[str] = set()
    for path in parent.paths:
        names.update(p.name for p in path.iterdir() if p.is_dir() and p.name.startswith(SANDBOX_PREFIX))
    return [Cgroup(parent.version, {c: d / name for c, d in parent.dirs.items()}) for name in sorted(names)]


def _keyed(path: Path, key: str) -> int:
    for line in _read(path).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    raise ValueError(f"no {key} in {path}")


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise CgroupUnavailable(f"cannot read {path}: {exc}") from exc


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)
