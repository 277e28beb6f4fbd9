"""One executor per data directory: a lock file it holds (flock) for as long as it runs.

Two executors on one data directory would take each other's work for leftovers of a crash:
each sweeps the task directories it does not run itself, releases the loop filesystems it
finds at start and delivers the history spools it finds. The kernel drops an flock when its
holder dies (kill -9 included), so a crashed executor never leaves a stale lock; the pid
written in the file names the holder in the refusal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_FILE = "executor.lock"


class DataDirInUse(Exception):
    """Another live executor holds this data directory; the message names it and the fix."""


class DataDirLock:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        return str(int(os.pread(fd, 32, 0).decode().strip()))
    return "unknown"


def lock_data_dir(data_dir: Path) -> DataDirLock:
    """Takes <data_dir>/executor.lock, or raises DataDirInUse naming the executor holding it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    # O_CLOEXEC: a sandbox outliving a killed executor must not keep its lock.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise DataDirInUse(
            f"the data directory {data_dir} is in use by another executor (pid {holder} holds "
            f"{path}): give each executor its own CORRAL_DATA_DIR"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return DataDirLock(path, fd)
