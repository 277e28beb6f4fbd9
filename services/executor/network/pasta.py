"""pasta (Debian's `passt`): user-mode networking for one sandbox's network namespace.

pasta gives the namespace a tap interface and carries its TCP/UDP/ICMP out through ordinary
sockets of the host: the sandbox reaches what the host could, minus what the namespace's
nftables rules refuse before a packet reaches the tap. Nothing of the host is mapped in:
- no port forwarding either way (`-t none -u none -T none -U none`): pasta's default, `auto`,
  would carry connections to the namespace's loopback ports over to the host's;
- `--no-map-gw`: the gateway address would otherwise stand for the host's loopback;
- no DNS forwarding (`--dns-forward` is not given), the sandbox's resolver is Corral's.

pasta runs in the foreground as the executor's child, which kills it when the sandbox closes
(it also quits on its own when the namespace is deleted). It parses what the sandbox sends, so
it is given no privilege on the host: it runs as an unprivileged uid of its own
(`sandbox_network_helper_uid`), which owns the user namespace that owns the sandbox's network
namespace (netns.add(owner_uid=...)); it joins both (`--userns`, `--netns`) and holds its
capabilities only there. That needs /dev/net/tun open to that uid (mode 0666, as distributions
ship it). Where it is not, pasta falls back to running as root (`--runas 0`: pasta drops to
`nobody` by default, which cannot join a namespace the host's user namespace owns), confined by
its own seccomp filter, an empty mount namespace and every capability dropped but
CAP_NET_BIND_SERVICE and CAP_SYS_ADMIN; the executor says so when it starts.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import tempfile
from typing import IO

from services.executor.network import netns

READY_TIMEOUT = 10.0
STOP_GRACE_SECONDS = 2.0


TUN_DEVICE = "/dev/net/tun"


def tun_blocker(uid: int, device: str = TUN_DEVICE) -> str:
    """Why pasta cannot run as `uid` ("" when it can): it opens the tun device itself."""
    try:
        info = os.stat(device)
    except OSError as exc:
        return f"{device}: {exc.strerror}"
    mode = info.st_mode
    if mode & stat.S_IROTH and mode & stat.S_IWOTH:
        return ""
    if info.st_uid == uid and mode & stat.S_IRUSR and mode & stat.S_IWUSR:
        return ""
    return f"{device} is mode {stat.filemode(mode)[1:]}, not usable by uid {uid} (chmod 0666 {device}, as distributions ship it)"


def command(pasta: str, name: str, unprivileged: bool) -> list[str]:
    join = ["--userns", netns.userns_path(name)] if unprivileged else ["--runas", "0"]
    return [
        pasta,
        "--foreground",
        "--quiet",
        *join,
        "--netns", netns.netns_path(name),
        "--config-net",
        "--no-map-gw",
        "-t", "none", "-u", "none", "-T", "none", "-U", "none",
    ]


class Pasta:
    """One pasta process attached to the namespace `name`; run as `uid` (None: as root), which
    then owns the namespace's user namespace."""

    def __init__(self, pasta: str, name: str, uid: int | None) -> None:
        self.argv = command(pasta, name, unprivileged=uid is not None)
        if uid is not None:
            self.argv = [*netns.drop_to(uid), *self.argv]
        self.name = name
        self.uid = uid
        self.process: subprocess.Popen[bytes] | None = None
        # pasta's stderr (a file, not a pipe nobody reads while it runs), for its last words.
        self.log: IO[bytes] | None = None

    def start(self) -> None:
        """Starts pasta and returns once the namespace has its interface and default route.
        Blocking (run it in a thread); raises netns.NetnsError."""
        self.log = tempfile.TemporaryFile()
        try:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self.log,
                start_new_session=True,
            )
        except OSError as exc:
            self.log.close()
            raise netns.NetnsError(f"cannot run pasta: {exc}") from exc
        process = self.process
        try:
            netns.wait_for_default_route(self.name, READY_TIMEOUT, lambda: process.poll() is None)
        except netns.NetnsError as exc:
            words = self.stop()
            raise netns.NetnsError(f"{exc}: {words}" if words else str(exc)) from None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def stop(self) -> str:
        """Ends pasta (bounded); returns its last words on stderr. Blocking; idempotent."""
        process = self.process
        if process is None:
            return ""
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_GRACE_SECONDS)
        words = b""
        if self.log is not None and not self.log.closed:
            with contextlib.suppress(OSError, ValueError):
                self.log.seek(0)
                words = self.log.read()[-4096:]
            self.log.close()
        lines = [
            line for line in words.decode("utf-8", "replace").splitlines()
            if line.strip() and "syslog" not in line
        ]
        return "; ".join(lines[-3:])
