"""pasta (Debian's `passt`): user-mode networking for one sandbox's network namespace.

pasta gives the namespace a tap interface and carries its TCP/UDP/ICMP out through ordinary
sockets of the host: the sandbox reaches what the host could, minus what the namespace's
nftables rules refuse before a packet reaches the tap. Nothing of the host is mapped in:
- no port forwarding either way (`-t none -u none -T none -U none`): pasta's default, `auto`,
  would carry connections to the namespace's loopback ports over to the host's;
- `--no-map-gw`: the gateway address would otherwise stand for the host's loopback;
- no DNS forwarding (`--dns-forward` is not given), the sandbox's resolver is Corral's.

pasta runs in the foreground as the executor's child, which kills it when the sandbox closes
(it also quits on its own when the namespace is deleted). It refuses to run as root and drops
to `nobody` before joining the namespace, which then fails for a namespace owned by the host's
user namespace ("Couldn't switch to pasta namespaces", Debian's 2023 pasta): it is told
`--runas 0` instead, and confines itself anyway (seccomp, an empty mount namespace, every
capability dropped but CAP_NET_BIND_SERVICE and CAP_SYS_ADMIN).
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from typing import IO

from services.executor.network import netns

READY_TIMEOUT = 10.0
STOP_GRACE_SECONDS = 2.0


def command(pasta: str, name: str) -> list[str]:
    return [
        pasta,
        "--foreground",
        "--quiet",
        "--runas", "0",
        "--netns", netns.netns_path(name),
        "--config-net",
        "--no-map-gw",
        "-t", "none", "-u", "none", "-T", "none", "-U", "none",
    ]


class Pasta:
    """One pasta process attached to the namespace `name`."""

    def __init__(self, pasta: str, name: str) -> None:
        self.argv = command(pasta, name)
        self.name = name
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
