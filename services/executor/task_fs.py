"""Per-sandbox filesystems: the disk quota enforced by the kernel, where the executor can.

Each sandbox's writable directory (a task's directory, a warm sandbox's slot, a long-lived
sandbox's /tasks) can be its own ext4 filesystem: a sparse image file of the quota (plus its
metadata) under data_dir/disks, made without a journal or reserved blocks, with about
`sandbox_max_files` inodes, and loop-mounted nosuid,nodev,noatime at the directory before the
sandbox starts. Writes past the quota then fail with ENOSPC inside the sandbox, unlinked-but-open
files count, an idle sandbox is bounded like a busy one, and nothing renamed or linked inside
leaves it; set-id bits and devices on it mean nothing on the host; the sandbox's mountinfo shows
the mount's own root (`/`), not the data directory's host path.

Lifecycle. A cold task's filesystem is made when its directory is (a copy of a template image
and a loop mount: fs_images.py); a warm sandbox's slot is made with the sandbox, ahead of any
task, at the default quota (tasks asking for another one get a cold sandbox). When the sandbox is gone (every process dead), its
files are copied out (cp: symlinks as links, hard links kept, holes kept) into a plain
directory at the same host path, set-id bits stripped and FIFOs/sockets/devices dropped, before
the copy is moved into place; then the filesystem is unmounted and its image deleted. So after
a task everything reads its directory as before, and loop devices are held only while
sandboxes run: at most `sandbox_max_filesystems` at once (beyond, a sandbox gets a measured
directory). The executor's start copies out and unmounts what a crashed run left (under its
own data directory only); its stop unmounts whatever is left.

Where no filesystem can be made (not root, no loop devices, a Docker host that cannot see the
executor's mounts, the setting off) the quota is measured instead (disk_quota.py), long-lived
sandboxes included while idle; the executor logs why at start and each task's agent.log says so.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import errno
import os
import re
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import structlog

from corral.config import Settings
from services.executor import fs_images

log = structlog.get_logger()

MIB = 1024 * 1024
DISKS_DIR = "disks"
# tasks_dir's directory of warm slots (drivers/warm_pool.py).
WARM_DIR = ".warm"
INODE_BYTES = 256
# A filesystem with less than this free is full (a writer stops at ENOSPC within one block).
FULL_BYTES = 64 * 1024
# Inodes ext4 uses itself (1-10 reserved, the root; lost+found is removed).
OWN_INODES = 11
# Blocks only root (the executor: agent.log, memory.json) may use, so a task that fills its
# filesystem still gets its journal written.
RESERVED_MIB = 8
COMMAND_TIMEOUT = 120.0
# copy_tree reads this much at a time, and leaves a hole for each all-zero block.
COPY_CHUNK = 256 * 1024
HOLE_BLOCK = 4096
ZEROS = bytes(COPY_CHUNK)
# The niceness of the thread that ends unmounted filesystems (release_later).
RELEASE_NICE = 10
REQUIRED_TOOLS = ("mount", "umount", "mkfs.ext4")

MNT_DETACH, UMOUNT_NOFOLLOW = 2, 8  # <sys/mount.h>
_libc = ctypes.CDLL(None, use_errno=True)

# One mount or unmount at a time: `mount -o loop` picks a free loop device, and a count of
# our mounts decides whether another may be made.
_mount_lock = threading.Lock()


# A filesystem could not be made or released (fs_images raises it too).
TaskFsError = fs_images.ImageError


def reserved_mib(disk_mb: int) -> int:
    return min(RESERVED_MIB, max(1, disk_mb // 4))


def image_mib(disk_mb: int, inodes: int) -> int:
    """Size of an image whose free space is at least `disk_mb` MiB for the sandbox (measured:
    ext4's inode tables, bitmaps and group descriptors take about this much on top) plus the
    executor's reserve."""
    return disk_mb + reserved_mib(disk_mb) + (inodes * INODE_BYTES + MIB - 1) // MIB + disk_mb // 256 + 2


def _unescape(field: str) -> str:
    """A mountinfo path field (spaces, tabs, newlines and backslashes are octal escapes)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def loop_mounts_under(root: Path) -> list[Path]:
    """Mount points of loop-device filesystems at or below `root`, deepest first."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 2 or not tail[1].startswith("/dev/loop"):
                continue
            point = Path(_unescape(fields[4]))
            if point == root or point.is_relative_to(root):
                found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _backing_text(mount_point: Path) -> str:
    try:
        dev = os.stat(mount_point).st_dev
        return Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/loop/backing_file").read_text().strip()
    except OSError:
        return ""


def backing_file(mount_point: Path) -> Path | None:
    """The image file behind a loop-mounted filesystem, from sysfs."""
    text = _backing_text(mount_point)
    return Path(text.removesuffix(" (deleted)")) if text else None


def other_sandbox_mounts(own: Path) -> list[Path]:
    """Mount points of sandbox filesystems (any executor's) other than the one holding `own`."""
    own = own.resolve()
    return [
        point
        for point in loop_mounts_under(Path("/"))
        if not (own == point or own.is_relative_to(point))
        and (image := backing_file(point)) is not None
        and image.parent.name == DISKS_DIR
    ]


def discard_orphans() -> int:
    """Lazily unmounts every sandbox filesystem whose image was deleted while it was mounted:
    the data directory of an executor that was killed has since been removed (tests do), so
    nobody will start there again. A running executor never deletes a mounted image. Returns
    how many."""
    count = 0
    for point in loop_mounts_under(Path("/")):
        text = _backing_text(point)
        if text.endswith(" (deleted)") and Path(text.removesuffix(" (deleted)")).parent.name == DISKS_DIR:
            with contextlib.suppress(TaskFsError):
                fs_images.run(["umount", "--lazy", str(point)])
                count += 1
    return count


def unmount(mount_point: Path) -> None:
    """Unmounts and deletes the image. The mount leaves the tree at once (a lazy umount2(2)
    while a descriptor of ours still holds it); the costly part, the filesystem's own end and
    its loop device's (40-100 ms on a loaded host, which each task's end waited for), comes
    with the last reference: ours, let go of in the background (release_later), or that of
    whatever else still holds it (a journal's descriptor, say)."""
    image = backing_file(mount_point)
    held = os.open(mount_point, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with _mount_lock:
            if _libc.umount2(os.fsencode(mount_point), MNT_DETACH | UMOUNT_NOFOLLOW) != 0:
                raise TaskFsError(f"umount {mount_point} failed: {os.strerror(ctypes.get_errno())}")
    except BaseException:
        os.close(held)
        raise
    release_later(held)
    if image is not None and image.parent.name == DISKS_DIR:
        with contextlib.suppress(FileNotFoundError):
            image.unlink()  # its blocks go with the loop device


def copy_tree(source: Path, tree: Path) -> None:
    """`cp --no-dereference --recursive --sparse=always --preserve=mode,ownership,timestamps,links`
    in this process (a cp process cost ~20 ms of each task's end on a loaded host): symlinks
    are copied as links, hard links and holes are kept; FIFOs, sockets and devices are left
    out and set-id bits dropped. `source` is on a filesystem no sandbox uses any more (nothing
    changes under it); `tree` is made, in a directory only root can enter."""
    linked: dict[tuple[int, int], str] = {}
    os.mkdir(tree, 0o700)
    dirs = [(str(tree), os.lstat(source))]
    todo = [(str(source), str(tree))]  # a list, not recursion: a tree may be deep
    while todo:
        source_dir, copy_dir = todo.pop()
        with os.scandir(source_dir) as entries:
            for entry in entries:
                path, copy = entry.path, os.path.join(copy_dir, entry.name)
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    os.mkdir(copy, 0o700)
                    dirs.append((copy, st))
                    todo.append((path, copy))
                    continue
                if stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(path), copy)
                elif stat.S_ISREG(st.st_mode):
                    inode = (st.st_dev, st.st_ino)
                    if inode in linked:
                        os.link(linked[inode], copy)
                        continue
                    _copy_file(path, copy, st.st_size)
                    if st.st_nlink > 1:
                        linked[inode] = copy
                else:
                    continue  # a FIFO, socket or device: left out
                _keep_attributes(copy, st)
    for path, st in reversed(dirs):  # a directory's times once nothing more is made in it
        _keep_attributes(path, st)


def _copy_file(path: str, copy: str, size: int) -> None:
    """Its data extents only (SEEK_DATA / SEEK_HOLE), and of those the blocks that are not all
    zeros (as cp --sparse=always): a file of zeros filling the quota takes no host disk."""
    src = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        dst = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            offset = 0
            while offset < size:
                try:
                    data = os.lseek(src, offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:
                        break  # a hole to the end
                    raise
                hole = min(os.lseek(src, data, os.SEEK_HOLE), size)
                _copy_blocks(src, dst, data, hole)
                offset = hole
            os.ftruncate(dst, size)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_blocks(src: int, dst: int, start: int, end: int) -> None:
    """Bytes start..end of `src` to the same place in `dst`, all-zero blocks left as holes."""
    position = start
    while position < end:
        chunk = os.pread(src, min(COPY_CHUNK, end - position), position)
        if not chunk:
            return  # shorter than it said
        if chunk != ZEROS[: len(chunk)]:
            for at in range(0, len(chunk), HOLE_BLOCK):
                block = chunk[at : at + HOLE_BLOCK]
                if block != ZEROS[: len(block)]:
                    os.pwrite(dst, block, position + at)
        position += len(chunk)


def _keep_attributes(path: str, st: os.stat_result) -> None:
    os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):  # (a link's own mode means nothing)
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_out(source: Path, target: Path, before_install: Callable[[], None] = lambda: None) -> None:
    """Copies the directory `source` (on a filesystem no sandbox uses any more) to `target`, a
    plain host directory: set-id bits stripped, FIFOs, sockets and devices left out. The copy is
    made in a root-only staging directory beside `target` and moved into place (replacing a
    symlink or an empty directory there, after `before_install`, e.g. the unmount of `target`),
    so no host user ever sees a set-id file of it."""
    staging = target.parent / f".copy-{target.name}-{uuid.uuid4().hex[:8]}"
    os.mkdir(staging, 0o700)
    tree = staging / "tree"
    try:
        if source.is_dir() and not source.is_symlink():
            copy_tree(source, tree)
        else:
            # The sandbox replaced its directory (by a symlink, say): nothing of it is kept.
            log.warning(
                "a task directory was no directory at its end; keeping an empty one", path=str(source)
            )
            os.mkdir(tree, 0o755)
        before_install()
        if target.is_symlink():
            target.unlink()
        elif target.is_dir():
            target.rmdir()  # an empty mount point by now
        os.rename(tree, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def release(mount_point: Path) -> None:
    """A task's (or long-lived sandbox's) filesystem after its sandbox ended: its files are
    copied out to the same host path, then it is unmounted. Errors are logged; files that
    could not be copied are dropped with the filesystem (a loop device is never kept)."""
    try:
        copy_out(mount_point, mount_point, before_install=lambda: unmount(mount_point))
        return
    except (TaskFsError, OSError) as exc:
        log.error(
            "could not copy a sandbox filesystem's files out; dropping them",
            path=str(mount_point),
            error=str(exc),
        )
    if os.path.ismount(mount_point):
        discard(mount_point)
        with contextlib.suppress(OSError):
            os.mkdir(mount_point, 0o755)


def release_slot(slot: Path, task_dir: Path | None, task_id: str) -> None:
    """A warm slot that is its own filesystem, after its sandbox ended: the claimed task's
    directory is copied out to `task_dir` (replacing the symlink); the rest goes with it (the
    mount leaves the tree at once). Its empty mount point is removed in the background once a
    task's directory is out: that rmdir took up to 80 ms while the container's mount namespace
    was being torn down, and the task's `finished` waited for it."""
    if task_dir is None:
        discard(slot)
        return
    keep_from_slot(slot, task_id, task_dir)
    drop_slot(slot)


def drop_slot(slot: Path) -> None:
    """A warm slot that is its own filesystem, its task's directory out (release_slot)."""
    try:
        unmount(slot)
    except (TaskFsError, OSError) as exc:
        log.error("could not unmount a sandbox filesystem", path=str(slot), error=str(exc))
        return
    future = _releaser.submit(_remove_mount_point, slot)
    _releasing.add(future)
    future.add_done_callback(_releasing.discard)


def _remove_mount_point(path: Path) -> None:
    try:
        path.rmdir()
    except OSError as exc:
        log.error("could not remove a sandbox filesystem's mount point", path=str(path), error=str(exc))


def _lower_priority() -> None:
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), RELEASE_NICE)


# The last references of unmounted filesystems (unmount): let go of one at a time, at a lower
# CPU priority than the tasks' own work, by a thread nothing waits for but stop().
_releaser = concurrent.futures.ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="corral-fs-release", initializer=_lower_priority
)
_releasing: set[concurrent.futures.Future[None]] = set()


def release_later(held: int) -> None:
    """Closes `held`, a descriptor of a detached filesystem, in the background thread."""
    future = _releaser.submit(os.close, held)
    _releasing.add(future)
    future.add_done_callback(_releasing.discard)


def wait_released(timeout: float = COMMAND_TIMEOUT) -> None:
    """Until the filesystems unmounted (or discarded) so far are gone (their loop devices too)."""
    deadline = time.monotonic() + timeout
    # Again until none is left: a discard queues its mount's last reference behind it.
    while (pending := [f for f in list(_releasing) if not f.done()]) and time.monotonic() < deadline:
        concurrent.futures.wait(pending, timeout=max(0.0, deadline - time.monotonic()))


def discard(mount_point: Path) -> None:
    try:
        unmount(mount_point)
        mount_point.rmdir()
    except (TaskFsError, OSError) as exc:
        log.error("could not unmount a sandbox filesystem", path=str(mount_point), error=str(exc))


class TaskFilesystems:
    """Whether this executor makes per-sandbox filesystems, and making / releasing them."""

    def __init__(self, settings: Settings, blocked: str = "") -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.disks_dir = self.data_dir / DISKS_DIR
        self.max_mounts = settings.sandbox_max_filesystems
        self._images = fs_images.ImageMaker(self.disks_dir)
        off = "" if settings.sandbox_disk_fs else "CORRAL_SANDBOX_DISK_FS is off"
        self.unavailable = off or blocked or self._probe()

    @property
    def enabled(self) -> bool:
        return not self.unavailable

    @property
    def description(self) -> str:
        """How disk quotas are bounded here, for agent.log and the executor's start."""
        if self.enabled:
            return "disk quota: enforced by the kernel (the sandbox's own filesystem)"
        interval = self.settings.disk_check_interval_seconds
        return f"disk quota: measured every {interval:g}s, not enforced by the kernel ({self.unavailable})"

    def _probe(self) -> str:
        """Why no filesystem can be made here ("" when one can: a 1 MiB one was made)."""
        if os.geteuid() != 0:
            return "the executor is not root"
        if not os.path.exists("/dev/loop-control"):
            return "no /dev/loop-control"
        missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
        if missing:
            return f"missing {', '.join(missing)} (util-linux, e2fsprogs)"
        probe = self.disks_dir / "probe"
        try:
            self.disks_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                probe.rmdir()
            self._make(probe, 1, 16)
            unmount(probe)
            probe.rmdir()
        except (TaskFsError, OSError) as exc:
            return f"a test filesystem could not be mounted: {exc}"
        return ""

    def _make(self, path: Path, disk_mb: int, max_files: int) -> None:
        inodes = max_files + OWN_INODES
        image = self.disks_dir / f"{uuid.uuid4().hex}.img"
        size_mib = image_mib(disk_mb, inodes)
        self._images.make(image, size_mib, f"{100 * reserved_mib(disk_mb) / size_mib:.4f}", inodes)
        try:
            os.mkdir(path, 0o700)
            with _mount_lock:
                if len(loop_mounts_under(self.data_dir)) >= self.max_mounts:
                    raise TaskFsError(
                        f"{self.max_mounts} sandbox filesystems are in use (sandbox_max_filesystems)"
                    )
                fs_images.mount_loop(image, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rmdir(path)
            image.unlink()
            raise
        (path / "lost+found").rmdir()

    def attach(self, path: Path, disk_mb: int) -> bool:
        """Makes a filesystem of `disk_mb` MiB at `path` (which must not exist yet); False,
        logged, when this executor cannot (the directory is then left for the caller)."""
        if not self.enabled:
            return False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._make(path, disk_mb, self.settings.sandbox_max_files)
        except (TaskFsError, OSError) as exc:
            log.warning(
                "no filesystem of its own for a sandbox; its quota is measured",
                path=str(path),
                error=str(exc),
            )
            return False
        return True

    def recover(self) -> None:
        """At start: what a crashed run left under this data directory is copied out and
        unmounted (a warm slot: only the task directories linked from tasks_dir are kept),
        and images nobody mounts are deleted."""
        if os.geteuid() != 0:
            return  # nobody here could have mounted them
        orphans = discard_orphans()
        if orphans:
            log.warning("unmounted filesystems of removed data directories", count=orphans)
        tasks_dir = self.settings.tasks_dir.resolve()
        for point in loop_mounts_under(self.data_dir):
            log.warning("releasing a filesystem a previous run left", path=str(point))
            if point.parent == tasks_dir / WARM_DIR:
                try:
                    children = list(point.iterdir())
                except FileNotFoundError:
                    continue  # released meanwhile (by another executor sharing this data directory)
                for child in children:
                    link = tasks_dir / child.name
                    if link.is_symlink() and link.resolve() == child.resolve():
                        keep_from_slot(point, child.name, link)
                discard(point)
            else:
                release(point)
        if self.disks_dir.is_dir():
            for image in self.disks_dir.glob("*.img"):
                image.unlink()

    def stop(self) -> None:
        """At the executor's stop, after every sandbox closed: nothing of ours stays mounted."""
        wait_released()  # the slots discarded in the background first (recover would race them)
        self.recover()
        wait_released()


def keep_from_slot(slot: Path, name: str, task_dir: Path) -> None:
    """Copies slot/name out to task_dir (see copy_out); errors are logged."""
    try:
        copy_out(slot / name, task_dir)
    except (TaskFsError, OSError) as exc:
        log.error("could not copy a task directory out of its warm slot", slot=str(slot), error=str(exc))
        with contextlib.suppress(OSError):
            if task_dir.is_symlink():
                task_dir.unlink()
                os.mkdir(task_dir, 0o755)


def full_message(root: Path, disk_mb: int, max_files: int) -> str:
    """Why a sandbox's own filesystem at `root` is full, or ""."""
    try:
        st = os.statvfs(root)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return ""
        raise
    if st.f_bavail * st.f_frsize < FULL_BYTES:
        return f"disk quota exceeded: the task directory is full (its {disk_mb} MiB are used)"
    if st.f_favail == 0:
        return f"disk quota exceeded: the task directory holds its limit of {max_files} files"
    return ""
