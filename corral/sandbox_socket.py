"""Reaching a unix socket that a sandbox made, without following anything the sandbox planted.

A sandbox's run directory (its gui service's, x11vnc's and Jupyter's sockets) is writable from
inside: sandboxed code can replace `vnc.sock` by a symlink to the Docker socket, or to another
sandbox's `gui.sock`, and a host process that connects by name would follow it. So the host
(gateway, executor) never connects by name. It opens the entry with O_PATH | O_NOFOLLOW beneath
the run directory (itself opened O_NOFOLLOW), checks the descriptor (a socket, not a link; on
the run directory's filesystem; owned by the run directory's owner, the sandbox user), and
connects through `/proc/self/fd/N`, which reaches exactly the inode it checked (systemd's
`connect_unix_path` uses the same trick).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from types import TracebackType


class SocketRefused(OSError):
    """The entry is not a socket the sandbox made in its run directory (a link, a file...)."""


class SandboxSocket:
    """A checked O_PATH descriptor of the socket `name` in `directory`; connect to `.path`
    while it is open. Raises SocketRefused (an OSError) if the entry is not acceptable, and
    the usual OSError (FileNotFoundError...) if it cannot be opened."""

    def __init__(self, directory: Path, name: str) -> None:
        self.fd = -1
        if not name or "/" in name or name in (".", ".."):
            raise SocketRefused(errno.EINVAL, f"{name!r} is not a socket name")
        self.name = name
        dir_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                _check(os.fstat(fd), os.fstat(dir_fd), name)
            except BaseException:
                os.close(fd)
                raise
        finally:
            os.close(dir_fd)
        self.fd = fd

    @property
    def path(self) -> str:
        """A path that reaches the checked socket, for connect() (valid while this is open)."""
        return f"/proc/self/fd/{self.fd}"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> SandboxSocket:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def _check(entry: os.stat_result, directory: os.stat_result, name: str) -> None:
    if stat.S_ISLNK(entry.st_mode):
        raise SocketRefused(errno.ELOOP, f"{name} is a symbolic link (refused: the sandbox controls it)")
    if not stat.S_ISSOCK(entry.st_mode):
        raise SocketRefused(errno.ENOTSOCK, f"{name} is not a socket")
    if entry.st_dev != directory.st_dev:
        raise SocketRefused(errno.EXDEV, f"{name} is not on the run directory's filesystem")
    # The sandbox user owns the run directory; a world-writable one (an executor that cannot
    # chown) has no owner to compare with, but a socket of root's is never the sandbox's.
    world_writable = bool(directory.st_mode & stat.S_IWOTH)
    if entry.st_uid != directory.st_uid and (not world_writable or entry.st_uid == 0):
        raise SocketRefused(
            errno.EPERM, f"{name} belongs to uid {entry.st_uid}, not to the sandbox user (uid {directory.st_uid})"
        )
