"""The executor's side of GUI steps: a connection to a sandbox's gui service, and screenshots
saved into the task directory. What each action does is corral/steps/gui.py.

The gui service listens on a unix socket in the sandbox's run directory; the executor's host
reaches it there, through a checked descriptor.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from corral.grpc_server import CHANNEL_OPTIONS
from corral.sandbox_socket import SandboxSocket
from corral.steps import StepFailed
from corral.v1 import gui_pb2_grpc

SCREENSHOTS = "screenshots"
GUI_SOCKET = "gui.sock"


class GuiClient:
    """A connection to one sandbox's gui service, through the socket's checked descriptor
    (corral/sandbox_socket.py: the sandbox may have replaced gui.sock by a link to another
    sandbox's), held open as long as the channel, which may reconnect through it."""

    def __init__(self, run_dir: Path) -> None:
        try:
            self.socket = SandboxSocket(run_dir, GUI_SOCKET)
        except OSError as exc:
            raise StepFailed(f"the sandbox's gui service is not reachable: {GUI_SOCKET}: {exc.strerror}") from None
        self.channel = grpc.aio.insecure_channel(f"unix:{self.socket.path}", options=CHANNEL_OPTIONS)
        self.stub = gui_pb2_grpc.GuiServiceStub(self.channel)

    async def close(self) -> None:
        try:
            await self.channel.close(None)
        finally:
            self.socket.close()


class ScreenshotWriter:
    """Saves PNGs under the host task directory (its descriptor, SandboxLease.task_dir_fd)
    without following links the sandbox made."""

    def __init__(self, task_dir_fd: int, sandbox_task_dir: str) -> None:
        self.task_dir_fd = task_dir_fd
        self.sandbox_task_dir = sandbox_task_dir

    def save(self, name: str, png: bytes) -> str:
        task_fd = self.task_dir_fd
        try:
            try:
                os.mkdir(SCREENSHOTS, 0o755, dir_fd=task_fd)
            except FileExistsError:
                pass
            # O_NOFOLLOW + O_DIRECTORY: a symlink planted by a step is refused, not followed.
            dir_fd = os.open(SCREENSHOTS, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=task_fd)
            try:
                fd = os.open(
                    name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd
                )
                with os.fdopen(fd, "wb") as f:
                    f.write(png)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StepFailed(f"could not save the screenshot {SCREENSHOTS}/{name}: {exc.strerror}") from None
        return f"{self.sandbox_task_dir}/{SCREENSHOTS}/{name}"
