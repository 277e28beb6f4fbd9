"""The cheap way to a sandbox's own filesystem (task_fs.py): ext4 images cloned from a template,
mounted on a loop device by system calls.

Each sandbox's filesystem used to cost a `mkfs.ext4` and a `mount -o loop` process (3.6 ms and
4.8 ms of CPU on the 2-core reference machine, about a sixth of a one-step task's CPU outside the
services). Here `mkfs.ext4` runs once per image shape (size, inodes) and executor run, and every
sandbox's image is a sparse copy of that template (the ~150 KiB mkfs wrote, by
copy_file_range); the loop device is bound with LOOP_CONFIGURE (Linux 5.8+; one ioctl, with
autoclear, so the device goes with the filesystem's last reference) and the filesystem mounted
with mount(2). Where the kernel has no LOOP_CONFIGURE, or no /dev/loopN node appears (a
container without udev), `mount -o loop` does it as before.

The copies share the template's UUID and directory-hash seed. Nothing in a sandbox can read
either (it has no block device), and a new executor run makes new templates.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import subprocess
import threading
import uuid
from pathlib import Path

MIB = 1024 * 1024
COMMAND_TIMEOUT = 120.0

# <linux/loop.h>
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_AUTOCLEAR = 4
LO_NAME_SIZE = 64
# <sys/mount.h>
MS_NOSUID, MS_NODEV, MS_NOATIME = 2, 4, 1024
# A free device can be taken by another process between asking and binding: ask again.
BIND_TRIES = 16

_libc = ctypes.CDLL(None, use_errno=True)


class ImageError(Exception):
    """An image or filesystem could not be made, mounted or released (task_fs.TaskFsError)."""


class _LoopInfo64(ctypes.Structure):
    _fields_ = [
        ("lo_device", ctypes.c_uint64),
        ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64),
        ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32),
        ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32),
        ("lo_file_name", ctypes.c_char * LO_NAME_SIZE),
        ("lo_crypt_name", ctypes.c_char * LO_NAME_SIZE),
        ("lo_encrypt_key", ctypes.c_uint8 * 32),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class _LoopConfig(ctypes.Structure):
    _fields_ = [
        ("fd", ctypes.c_uint32),
        ("block_size", ctypes.c_uint32),
        ("info", _LoopInfo64),
        ("reserved", ctypes.c_uint64 * 8),
    ]


def run(argv: list[str]) -> None:
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except subprocess.CalledProcessError as exc:
        raise ImageError(f"{argv[0]} failed: {(exc.stderr or exc.stdout).strip()}") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImageError(f"{argv[0]} failed: {exc}") from exc


class ImageMaker:
    """ext4 images of a shape, each a copy of that shape's template (made by mkfs on first
    need, in `disks_dir`, which the executor empties of images at each start)."""

    def __init__(self, disks_dir: Path) -> None:
        self.disks_dir = disks_dir
        self._templates: dict[tuple[int, str, int], tuple[Path, list[tuple[int, int]]]] = {}
        self._lock = threading.Lock()

    def make(self, image: Path, size_mib: int, reserved_percent: str, inodes: int) -> None:
        """A new image file at `image` (which must not exist): ext4 of `size_mib` MiB with
        `inodes` inodes, `reserved_percent` of its blocks for root, no journal."""
        template, extents = self._template(size_mib, reserved_percent, inodes)
        source = os.open(template, os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(target, size_mib * MIB)  # sparse: costs what it holds
                for start, end in extents:
                    offset = start
                    while offset < end:
                        copied = os.copy_file_range(source, target, end - offset, offset, offset)
                        if copied == 0:
                            raise ImageError(f"the template {template.name} ended early")
                        offset += copied
            except BaseException:
                os.close(target)
                image.unlink()
                raise
            os.close(target)
        finally:
            os.close(source)

    def _template(self, size_mib: int, reserved_percent: str, inodes: int) -> tuple[Path, list[tuple[int, int]]]:
        key = (size_mib, reserved_percent, inodes)
        with self._lock:
            known = self._templates.get(key)
            if known is not None and known[0].exists():
                return known
            template = self.disks_dir / f"template-{uuid.uuid4().hex}.img"
            fd = os.open(template, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, size_mib * MIB)
            finally:
                os.close(fd)
            try:
                run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-m", reserved_percent, "-N", str(inodes),
                     "-O", "^has_journal,^resize_inode", "-E", "nodiscard", str(template)])
                extents = _data_extents(template)
            except BaseException:
                template.unlink()
                raise
            if known is not None:
                self._templates.pop(key, None)
            self._templates[key] = (template, extents)
            return template, extents


def _data_extents(path: Path) -> list[tuple[int, int]]:
    """The [start, end) byte ranges of a sparse file that hold data."""
    extents = []
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size, offset = os.fstat(fd).st_size, 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, end))
            offset = end
    finally:
        os.close(fd)
    return extents


# None until the first mount says whether LOOP_CONFIGURE works here.
_direct: bool | None = None


def mount_loop(image: Path, mount_point: Path) -> None:
    """`mount -t ext4 -o loop,nosuid,nodev,noatime image mount_point`, by system calls where
    this kernel can (the caller serialises mounts)."""
    global _direct
    if _direct is not False:
        try:
            _mount_direct(image, mount_point)
            _direct = True
            return
        except _NoDirectWay:
            _direct = False
    run(["mount", "-t", "ext4", "-o", "loop,nosuid,nodev,noatime", str(image), str(mount_point)])


class _NoDirectWay(Exception):
    """This kernel or /dev cannot bind a loop device by LOOP_CONFIGURE."""


def _mount_direct(image: Path, mount_point: Path) -> None:
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        device, path = _bind_loop(backing, image)
        try:
            flags = MS_NOSUID | MS_NODEV | MS_NOATIME
            if _libc.mount(os.fsencode(path), os.fsencode(mount_point), b"ext4", flags, None) != 0:
                code = ctypes.get_errno()
                raise ImageError(f"mount {image.name} at {mount_point} failed: {os.strerror(code)}")
        finally:
            os.close(device)  # autoclear: the device now lives as long as the mount
    finally:
        os.close(backing)


def _bind_loop(backing: int, image: Path) -> tuple[int, str]:
    """A free loop device bound to `backing` (its descriptor and path)."""
    try:
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise _NoDirectWay from exc
    try:
        for _ in range(BIND_TRIES):
            number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
            path = f"/dev/loop{number}"
            try:
                device = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError as exc:
                raise _NoDirectWay from exc  # no udev made the node: mount(8) knows how
            config = _LoopConfig(fd=backing)
            config.info.lo_flags = LO_FLAGS_AUTOCLEAR
            config.info.lo_file_name = os.fsencode(image)[: LO_NAME_SIZE - 1]
            try:
                fcntl.ioctl(device, LOOP_CONFIGURE, bytes(config))
            except OSError as exc:
                os.close(device)
                if exc.errno == errno.EBUSY:
                    continue  # taken meanwhile
                if exc.errno in (errno.EINVAL, errno.ENOTTY):
                    raise _NoDirectWay from exc
                raise ImageError(f"binding {path} to {image.name} failed: {exc.strerror}") from exc
            return device, path
        raise ImageError(f"no free loop device after {BIND_TRIES} tries")
    finally:
        os.close(control)
