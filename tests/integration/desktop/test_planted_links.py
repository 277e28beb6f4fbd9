"""Attacks: a sandbox plants symlinks where host-side code connects or writes.

1. The sockets of its run directory, replaced by symlinks to host sockets.

The run directory (/run/corral inside) is the sandbox's to write, and the host connects to the
sockets there: the gateway to vnc.sock / vnc-view.sock / jupyter.sock, the executor to gui.sock.
Before the fix both connected by name, so a step's `ln -sf /var/run/docker.sock
/run/corral/vnc.sock` gave the browser's websocket the Docker API (host root), and a link to
another sandbox's gui.sock listed that sandbox's windows. Here the link points at a decoy socket
the test listens on; nothing may ever connect to it.

2. Its own task directory in a long-lived sandbox (/tasks/{id}, the sandbox's to write), moved
away and replaced by a symlink to a host directory, before a screenshot step: the executor (root)
saved the PNG by path, into the host directory. It now writes through the descriptor it opened
at the task's start.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from harness import Cluster

from .conftest import run_task


class Decoy:
    """A host unix socket that counts who connects and answers them with a marker."""

    MARKER = b"HOST-DECOY-SOCKET"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.connections = 0
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        os.chmod(path, 0o777)  # reachable by the unprivileged gateway too, as docker.sock would be
        self.server.listen(8)
        self.server.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                conn, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            with conn:
                conn.sendall(self.MARKER)

    def close(self) -> None:
        self.running = False
        self.thread.join(5)
        self.server.close()


@pytest.fixture
def decoy() -> Iterator[Decoy]:
    directory = Path(tempfile.mkdtemp(prefix="decoy-", dir="/tmp"))
    directory.chmod(0o755)
    server = Decoy(directory / "decoy.sock")
    try:
        yield server
    finally:
        server.close()
        shutil.rmtree(directory, ignore_errors=True)


async def vnc_websocket_reply(url: str, token: str) -> str:
    """What the gateway's VNC websocket gives: the first bytes, or how it was closed."""
    try:
        async with websockets.connect(
            url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=30
        ) as ws:
            first = await asyncio.wait_for(ws.recv(), 30)
            return f"data:{first!r}"
    except websockets.ConnectionClosed as exc:
        return f"closed:{exc.rcvd.code if exc.rcvd else None}:{exc.rcvd.reason if exc.rcvd else ''}"
    except websockets.InvalidStatus as exc:
        return f"refused:{exc.response.status_code}"


def test_symlinked_sockets_are_never_followed(
    api: httpx.Client, desktop_stack: Cluster, decoy: Decoy
) -> None:
    created = api.post("/v1/sandboxes", json={"desktop": True, "ttl": 600})
    assert created.status_code == 201, created.text
    sandbox = created.json()
    sandbox_id, token = sandbox["sandbox_id"], sandbox["token"]
    ws_url = desktop_stack.gateway_url.replace("http://", "ws://") + f"/v1/sandboxes/{sandbox_id}/vnc/websockify"
    try:
        # The real desktop answers first (RFB greeting), so the route itself works.
        genuine = asyncio.run(vnc_websocket_reply(ws_url, token))
        assert genuine.startswith("data:b'RFB "), genuine

        task = run_task(api, {"sandbox_id": sandbox_id, "steps": [
            {"tool": "shell", "command": (
                f"for s in vnc.sock vnc-view.sock gui.sock; do ln -sfn {decoy.path} /run/corral/$s || exit 1; done; "
                "ls -l /run/corral"
            )},
            # The executor's gui client connects now, for this task's first gui step.
            {"tool": "gui", "action": "list_windows"},
        ]})
        assert task["steps"][0]["status"] == "completed", task["steps"][0]
        assert "vnc.sock -> " in task["steps"][0]["stdout"], task["steps"][0]
        gui_step = task["steps"][1]
        assert gui_step["status"] == "failed", gui_step
        assert "gui.sock is a symbolic link" in gui_step["error"], gui_step

        for url in (ws_url, ws_url + "?view_only=1"):
            reply = asyncio.run(vnc_websocket_reply(url, token))
            assert reply.startswith("closed:1011:the desktop is not reachable"), reply
            assert "symbolic link" in reply, reply
        assert decoy.connections == 0
    finally:
        api.delete(f"/v1/sandboxes/{sandbox_id}")


def test_a_swapped_task_directory_does_not_redirect_screenshots(api: httpx.Client, desktop_stack: Cluster) -> None:
    victim = Path(tempfile.mkdtemp(prefix="victim-", dir="/tmp"))
    created = api.post("/v1/sandboxes", json={"desktop": True, "ttl": 600})
    assert created.status_code == 201, created.text
    sandbox_id = created.json()["sandbox_id"]
    try:
        task = run_task(api, {"sandbox_id": sandbox_id, "steps": [
            {"tool": "shell", "command": (
                f'me="$CORRAL_TASK_ID"; cd /tasks && mv "$me" moved-away && ln -s {victim} "$me" && ls -l /tasks'
            )},
            {"tool": "gui", "action": "screenshot"},
        ]})
        assert task["steps"][0]["status"] == "completed", (task["steps"][0]["stderr"], task["error"])
        assert f"-> {victim}" in task["steps"][0]["stdout"], task["steps"][0]
        assert list(victim.iterdir()) == [], "the executor wrote through the planted link"
        assert task["steps"][1]["status"] == "completed", task["steps"][1]
        # The PNG went where the task's directory really is now.
        moved = desktop_stack.data_dir / "sandboxes" / sandbox_id / "tasks" / "moved-away"
        assert [p.suffix for p in (moved / "screenshots").iterdir()] == [".png"]
    finally:
        api.delete(f"/v1/sandboxes/{sandbox_id}")
        shutil.rmtree(victim, ignore_errors=True)
