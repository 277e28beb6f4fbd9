"""GUI steps: a task's {"tool": "gui", ...} step turned into calls to the sandbox's gui service.

The gui service listens on a unix socket in the sandbox's run directory; the executor's host
reaches it there. Every GUI step answers with one JSON object as its stdout (what it did, or
what it found); screenshots are written to the task's screenshots/ directory and named in it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from corral.grpc_server import CHANNEL_OPTIONS
from corral.v1 import gui_pb2, gui_pb2_grpc, task_pb2

BUTTONS = {
    "": gui_pb2.MOUSE_BUTTON_LEFT,
    "left": gui_pb2.MOUSE_BUTTON_LEFT,
    "middle": gui_pb2.MOUSE_BUTTON_MIDDLE,
    "right": gui_pb2.MOUSE_BUTTON_RIGHT,
}
DIRECTIONS = {
    "up": gui_pb2.SCROLL_DIRECTION_UP,
    "down": gui_pb2.SCROLL_DIRECTION_DOWN,
    "left": gui_pb2.SCROLL_DIRECTION_LEFT,
    "right": gui_pb2.SCROLL_DIRECTION_RIGHT,
}
ACTIONS = (
    "screenshot", "move", "click", "double_click", "triple_click", "mouse_down", "mouse_up",
    "drag", "scroll", "type", "key", "cursor_position", "screen_size", "list_windows",
    "focus_window", "wait_window",
)
SCREENSHOTS = "screenshots"


class GuiStepError(Exception):
    """The action was refused or failed; the message is the step's error."""


@dataclass
class GuiOutcome:
    stdout: str
    screenshots: list[str]


class GuiClient:
    """A connection to one sandbox's gui service."""

    def __init__(self, socket_path: Path) -> None:
        self.channel = grpc.aio.insecure_channel(f"unix:{socket_path}", options=CHANNEL_OPTIONS)
        self.stub = gui_pb2_grpc.GuiServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close(None)


class ScreenshotWriter:
    """Saves PNGs under the host task directory without following links the sandbox made."""

    def __init__(self, host_task_dir: Path, sandbox_task_dir: str) -> None:
        self.host_task_dir = host_task_dir
        self.sandbox_task_dir = sandbox_task_dir

    def save(self, name: str, png: bytes) -> str:
        task_fd = os.open(self.host_task_dir, os.O_RDONLY | os.O_DIRECTORY)
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
            raise GuiStepError(f"could not save the screenshot {SCREENSHOTS}/{name}: {exc.strerror}") from None
        finally:
            os.close(task_fd)
        return f"{self.sandbox_task_dir}/{SCREENSHOTS}/{name}"


async def perform(
    client: GuiClient,
    action: task_pb2.GuiAction,
    writer: ScreenshotWriter,
    step_index: int,
    timeout: float,
) -> GuiOutcome:
    """Carries out one GUI action; raises GuiStepError with a message naming the problem."""
    name = action.action
    if name not in ACTIONS:
        raise GuiStepError(f"unknown gui action {name!r} (expected one of {', '.join(ACTIONS)})")
    stub = client.stub
    deadline = time.monotonic() + timeout
    screenshots: list[str] = []

    def left() -> float:
        return max(0.1, deadline - time.monotonic())

    async def call(method: Callable[..., Awaitable[Any]], request: Any) -> Any:
        try:
            return await method(request, timeout=left())
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise GuiStepError(f"gui {name} timed out after {timeout:g}s") from None
            if code == grpc.StatusCode.UNAVAILABLE:
                raise GuiStepError(f"the sandbox's gui service is not reachable: {exc.details()}") from None
            raise GuiStepError(exc.details() or code.name) from None

    async def screenshot(suffix: str) -> dict[str, Any]:
        reply = await call(
            stub.Screenshot,
            gui_pb2.ScreenshotRequest(max_width=action.max_width, max_height=action.max_height),
        )
        path = await asyncio.to_thread(
            writer.save, f"step-{step_index:03d}{suffix}.png", reply.png
        )
        screenshots.append(path)
        return {"screenshot": path, "width": reply.width, "height": reply.height, "scale": reply.scale}

    def button() -> gui_pb2.MouseButton.ValueType:
        if action.button not in BUTTONS:
            raise GuiStepError(f"unknown button {action.button!r} (left, middle or right)")
        return BUTTONS[action.button]

    result: dict[str, Any] = {"action": name}
    if name == "screenshot":
        result.update(await screenshot(""))
    elif name == "move":
        await call(stub.MoveMouse, gui_pb2.MoveMouseRequest(x=action.x, y=action.y))
    elif name in ("click", "double_click", "triple_click"):
        count = {"double_click": 2, "triple_click": 3}.get(name, action.count or 1)
        await call(
            stub.Click, gui_pb2.ClickRequest(x=action.x, y=action.y, button=button(), count=count)
        )
    elif name == "mouse_down":
        await call(stub.MouseDown, gui_pb2.MouseDownRequest(button=button()))
    elif name == "mouse_up":
        await call(stub.MouseUp, gui_pb2.MouseUpRequest(button=button()))
    elif name == "drag":
        await call(
            stub.Drag,
            gui_pb2.DragRequest(
                from_x=action.x, from_y=action.y, to_x=action.to_x, to_y=action.to_y, button=button()
            ),
        )
    elif name == "scroll":
        direction = DIRECTIONS.get(action.direction or "down")
        if direction is None:
            raise GuiStepError(f"unknown direction {action.direction!r} (up, down, left or right)")
        await call(
            stub.Scroll,
            gui_pb2.ScrollRequest(direction=direction, amount=action.amount or 1, x=action.x, y=action.y),
        )
    elif name == "type":
        await call(stub.TypeText, gui_pb2.TypeTextRequest(text=action.text))
    elif name == "key":
        await call(stub.PressKey, gui_pb2.PressKeyRequest(keys=action.keys or action.text))
    elif name == "cursor_position":
        reply = await call(stub.CursorPosition, gui_pb2.CursorPositionRequest())
        result.update(x=reply.x, y=reply.y)
    elif name == "screen_size":
        reply = await call(stub.ScreenSize, gui_pb2.ScreenSizeRequest())
        result.update(width=reply.width, height=reply.height)
    elif name == "list_windows":
        reply = await call(stub.ListWindows, gui_pb2.ListWindowsRequest())
        result["windows"] = [_window(w) for w in reply.windows]
    elif name == "focus_window":
        await call(stub.FocusWindow, gui_pb2.FocusWindowRequest(window_id=action.window_id))
    elif name == "wait_window":
        result["window"] = await _wait_window(call, stub, action.text, name, timeout, left)
    if action.screenshot_after and name != "screenshot":
        result["after"] = await screenshot("-after")
    return GuiOutcome(json.dumps(result) + "\n", screenshots)


def _window(w: gui_pb2.Window) -> dict[str, Any]:
    return {"id": w.id, "title": w.title, "x": w.x, "y": w.y, "width": w.width, "height": w.height}


async def _wait_window(
    call: Callable[..., Awaitable[Any]],
    stub: gui_pb2_grpc.GuiServiceAsyncStub,
    title: str,
    name: str,
    timeout: float,
    left: Callable[[], float],
) -> dict[str, Any]:
    if not title:
        raise GuiStepError("wait_window needs `text`: part of the window's title")
    while True:
        reply = await call(stub.ListWindows, gui_pb2.ListWindowsRequest())
        for window in reply.windows:
            if title in window.title:
                return _window(window)
        if left() <= 0.1:
            raise GuiStepError(f"no window titled like {title!r} appeared within {timeout:g}s")
        await asyncio.sleep(0.1)
