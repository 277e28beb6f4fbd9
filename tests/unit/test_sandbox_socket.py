"""corral/sandbox_socket.py: what a host process accepts as a sandbox's socket, on a real
filesystem with real sockets (the attack through a running sandbox is
tests/integration/desktop/test_socket_links.py)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.sandbox_socket import SandboxSocket, SocketRefused


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "run"
    directory.mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(directory / "vnc.sock"))
    server.listen(1)
    try:
        yield directory
    finally:
        server.close()


def test_a_genuine_socket_is_reached_through_its_descriptor(run_dir: Path) -> None:
    with SandboxSocket(run_dir, "vnc.sock") as checked:
        assert checked.path.startswith("/proc/self/fd/")
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(checked.path)
        client.close()
    assert checked.fd == -1


@pytest.mark.parametrize("kind", ["symlink", "dangling", "fifo", "file", "directory"])
def test_anything_but_a_socket_is_refused(run_dir: Path, kind: str) -> None:
    target = run_dir / "gui.sock"
    if kind == "symlink":
        target.symlink_to(run_dir / "vnc.sock")  # a real socket behind it: still refused
    elif kind == "dangling":
        target.symlink_to("/var/run/docker.sock")
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "file":
        target.write_text("")
    else:
        target.mkdir()
    with pytest.raises(SocketRefused) as refused:
        SandboxSocket(run_dir, "gui.sock")
    assert "gui.sock" in refused.value.strerror


def test_a_linked_run_directory_is_refused(run_dir: Path) -> None:
    link = run_dir.parent / "linked-run"
    link.symlink_to(run_dir)
    with pytest.raises(OSError):
        SandboxSocket(link, "vnc.sock")


@pytest.mark.parametrize("name", ["", ".", "..", "../run/vnc.sock", "a/b"])
def test_only_plain_names(run_dir: Path, name: str) -> None:
    with pytest.raises(SocketRefused):
        SandboxSocket(run_dir, name)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a socket's owner needs root")
def test_a_socket_of_another_user_is_refused(run_dir: Path) -> None:
    os.chown(run_dir, 65534, 65534)
    os.chown(run_dir / "vnc.sock", 0, 0, follow_symlinks=False)
    with pytest.raises(SocketRefused) as refused:
        SandboxSocket(run_dir, "vnc.sock")
    assert "uid 0" in refused.value.strerror
    os.chown(run_dir / "vnc.sock", 65534, 65534, follow_symlinks=False)
    SandboxSocket(run_dir, "vnc.sock").close()
