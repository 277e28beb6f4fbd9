"""GuiService over gRPC: checks arguments, then hands each call to Screen or Input.

Bad arguments raise corral.errors classes (Input's InvalidInput and InputFailed are too); the
server's interceptor turns them into status codes."""

from __future__ import annotations

import asyncio
from typing import Any

from corral.enums import enum_names
from corral.errors import InvalidArgument, NotFound
from corral.v1 import gui_pb2, gui_pb2_grpc
from services.gui.display import Screen
from services.gui.input import Input

Context = Any  # grpc.aio.ServicerContext; the sandbox's runtime has no grpc-stubs
# UNSPECIFIED means the left button; an unspecified direction is refused.
BUTTON_NAMES = {**enum_names(gui_pb2.MouseButton, "MOUSE_BUTTON_"), gui_pb2.MOUSE_BUTTON_UNSPECIFIED: "left"}
DIRECTION_NAMES = {
    k: v for k, v in enum_names(gui_pb2.ScrollDirection, "SCROLL_DIRECTION_").items()
    if k != gui_pb2.SCROLL_DIRECTION_UNSPECIFIED
}


class GuiServicer(gui_pb2_grpc.GuiServiceServicer):
    def __init__(self, screen: Screen, input_: Input) -> None:
        self.screen = screen
        self.input = input_

    async def _point(self, x: int, y: int, what: str = "") -> tuple[int, int]:
        width, height = await asyncio.to_thread(self.screen.size)
        if not (0 <= x < width and 0 <= y < height):
            label = f"{what} " if what else ""
            raise InvalidArgument(
                f"{label}({x}, {y}) is off the screen: x must be in 0..{width - 1}, y in 0..{height - 1}"
            )
        return x, y

    async def _button(self, button: int) -> str:
        name = BUTTON_NAMES.get(button)
        if name is None:
            raise InvalidArgument(f"unknown mouse button {button}")
        return str(name)

    async def Screenshot(self, request: Any, context: Context) -> gui_pb2.ScreenshotResponse:
        if request.max_width < 0 or request.max_height < 0:
            raise InvalidArgument("max_width and max_height must not be negative")
        shot = await asyncio.to_thread(self.screen.screenshot, request.max_width, request.max_height)
        return gui_pb2.ScreenshotResponse(png=shot.png, width=shot.width, height=shot.height, scale=shot.scale)

    async def MoveMouse(self, request: Any, context: Context) -> gui_pb2.MoveMouseResponse:
        point = await self._point(request.x, request.y)
        await self.input.move(*point)
        return gui_pb2.MoveMouseResponse()

    async def Click(self, request: Any, context: Context) -> gui_pb2.ClickResponse:
        point = await self._point(request.x, request.y)
        button = await self._button(request.button)
        await self.input.click(*point, button, request.count or 1)
        return gui_pb2.ClickResponse()

    async def MouseDown(self, request: Any, context: Context) -> gui_pb2.MouseDownResponse:
        await self.input.mouse_down(await self._button(request.button))
        return gui_pb2.MouseDownResponse()

    async def MouseUp(self, request: Any, context: Context) -> gui_pb2.MouseUpResponse:
        await self.input.mouse_up(await self._button(request.button))
        return gui_pb2.MouseUpResponse()

    async def Drag(self, request: Any, context: Context) -> gui_pb2.DragResponse:
        start = await self._point(request.from_x, request.from_y, "from")
        end = await self._point(request.to_x, request.to_y, "to")
        button = await self._button(request.button)
        await self.input.drag(start, end, button)
        return gui_pb2.DragResponse()

    async def Scroll(self, request: Any, context: Context) -> gui_pb2.ScrollResponse:
        direction = DIRECTION_NAMES.get(request.direction)
        if direction is None:
            raise InvalidArgument("direction is required (up, down, left, right)")
        at = None
        if request.x or request.y:
            at = await self._point(request.x, request.y)
        await self.input.scroll(str(direction), request.amount or 1, at)
        return gui_pb2.ScrollResponse()

    async def TypeText(self, request: Any, context: Context) -> gui_pb2.TypeTextResponse:
        await self.input.type_text(request.text)
        return gui_pb2.TypeTextResponse()

    async def PressKey(self, request: Any, context: Context) -> gui_pb2.PressKeyResponse:
        await self.input.press(request.keys)
        return gui_pb2.PressKeyResponse()

    async def CursorPosition(self, request: Any, context: Context) -> gui_pb2.CursorPositionResponse:
        x, y = await asyncio.to_thread(self.screen.cursor)
        return gui_pb2.CursorPositionResponse(x=x, y=y)

    async def ScreenSize(self, request: Any, context: Context) -> gui_pb2.ScreenSizeResponse:
        width, height = await asyncio.to_thread(self.screen.size)
        return gui_pb2.ScreenSizeResponse(width=width, height=height)

    async def ListWindows(self, request: Any, context: Context) -> gui_pb2.ListWindowsResponse:
        windows = await asyncio.to_thread(self.screen.windows)
        return gui_pb2.ListWindowsResponse(
            windows=[
                gui_pb2.Window(id=str(w.id), title=w.title, x=w.x, y=w.y, width=w.width, height=w.height)
                for w in windows
            ]
        )

    async def FocusWindow(self, request: Any, context: Context) -> gui_pb2.FocusWindowResponse:
        try:
            window_id = int(request.window_id, 0)
        except ValueError:
            raise InvalidArgument(f"window_id {request.window_id!r} is not a window id") from None
        if not await asyncio.to_thread(self.screen.window_exists, window_id):
            raise NotFound(f"no window with id {request.window_id}")
        await self.input.focus(window_id)
        return gui_pb2.FocusWindowResponse()
