"""The `gui` tool: desktop actions carried out by the sandbox's gui service.

In JSON a gui step is a discriminated union on `action` ({"tool": "gui", "action": "click",
"x": 10, "y": 20}); in the proto, `GuiAction` is a oneof of the gui service's own requests.
Actions, buttons, directions and key names are checked at submission; what needs the screen
(coordinates off it, a window that is not there) fails the step when it runs. Every gui step's
stdout is one JSON object: what it did or found, and the screenshots it saved.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, cast

import grpc
from pydantic import Field, field_validator

from corral.bounds import INT32_MAX, INT32_MIN
from corral.enums import enum_names
from corral.errors import InvalidTask
from corral.keys import key_problem
from corral.steps.base import StepContext, StepFailed, StepModelBase, StepOutcome, StepTool
from corral.v1 import gui_pb2, task_pb2

Button = Literal["left", "middle", "right"]
Direction = Literal["up", "down", "left", "right"]
# "left" -> MOUSE_BUTTON_LEFT..., "up" -> SCROLL_DIRECTION_UP...: the JSON names of gui.proto's enums.
BUTTON_NAMES = {k: v for k, v in enum_names(gui_pb2.MouseButton, "MOUSE_BUTTON_").items() if k}
DIRECTION_NAMES = {k: v for k, v in enum_names(gui_pb2.ScrollDirection, "SCROLL_DIRECTION_").items() if k}
BUTTONS = {name: cast(gui_pb2.MouseButton.ValueType, value) for value, name in BUTTON_NAMES.items()}
DIRECTIONS = {name: cast(gui_pb2.ScrollDirection.ValueType, value) for value, name in DIRECTION_NAMES.items()}
MAX_SCROLL = 200
# Screen coordinates are int32 in gui.proto; off-screen ones fail the step when it runs.
Coordinate = Annotated[int, Field(ge=INT32_MIN, le=INT32_MAX)]
Size = Annotated[int, Field(ge=0, le=INT32_MAX)]
CLICK_COUNTS = {"double_click": 2, "triple_click": 3}


# --- JSON ------------------------------------------------------------------------------------


class _Gui(StepModelBase):
    tool: Literal["gui"]
    screenshot_after: bool = Field(False, description="Also take a screenshot after the action.")
    max_width: Size = Field(0, description="Downscale screenshots to at most this width.")
    max_height: Size = Field(0, description="Downscale screenshots to at most this height.")


class _At(_Gui):
    x: Coordinate = Field(0, description="Screen x coordinate (pixels from the left).")
    y: Coordinate = Field(0, description="Screen y coordinate (pixels from the top).")


class GuiScreenshot(_Gui):
    """A PNG of the screen, saved as screenshots/step-NNN.png in the task directory."""

    action: Literal["screenshot"]


class GuiMove(_At):
    action: Literal["move"]


class GuiClick(_At):
    action: Literal["click"]
    button: Button = "left"
    count: int = Field(1, ge=0, le=3, description="Clicks (1-3; 0 means 1).")


class GuiDoubleClick(_At):
    action: Literal["double_click"]
    button: Button = "left"


class GuiTripleClick(_At):
    action: Literal["triple_click"]
    button: Button = "left"


class GuiMouseDown(_Gui):
    action: Literal["mouse_down"]
    button: Button = "left"


class GuiMouseUp(_Gui):
    action: Literal["mouse_up"]
    button: Button = "left"


class GuiDrag(_At):
    """Press at (x, y), move to (to_x, to_y), release."""

    action: Literal["drag"]
    to_x: Coordinate = 0
    to_y: Coordinate = 0
    button: Button = "left"


class GuiScroll(_Gui):
    action: Literal["scroll"]
    direction: Direction = "down"
    amount: int = Field(1, ge=0, le=MAX_SCROLL, description="Wheel clicks (0 means 1).")
    x: Coordinate = Field(0, description="Where to scroll (with y); the pointer's place if both are 0.")
    y: Coordinate = 0


class GuiType(_Gui):
    action: Literal["type"]
    text: str = Field("", description="Typed as it is, in chunks; '\\n' presses Return.")


class GuiKey(_Gui):
    action: Literal["key"]
    keys: str = Field("", description="X key names and combinations: 'Return', 'ctrl+shift+t'.")
    text: str = Field("", description="Older spelling of `keys`, used when `keys` is empty.")

    @field_validator("keys", "text")
    @classmethod
    def _known_keys(cls, value: str) -> str:
        if value and (problem := key_problem(value)):
            raise ValueError(problem)
        return value


class GuiCursorPosition(_Gui):
    action: Literal["cursor_position"]


class GuiScreenSize(_Gui):
    action: Literal["screen_size"]


class GuiListWindows(_Gui):
    action: Literal["list_windows"]


class GuiFocusWindow(_Gui):
    action: Literal["focus_window"]
    window_id: str = Field(min_length=1, description="From list_windows.")


class GuiWaitWindow(_Gui):
    """Waits (up to the step's timeout) until a window whose title contains `text` exists."""

    action: Literal["wait_window"]
    text: str = Field(min_length=1, description="Part of the window's title.")


GuiStep = Annotated[
    GuiScreenshot | GuiMove | GuiClick | GuiDoubleClick | GuiTripleClick | GuiMouseDown
    | GuiMouseUp | GuiDrag | GuiScroll | GuiType | GuiKey | GuiCursorPosition | GuiScreenSize
    | GuiListWindows | GuiFocusWindow | GuiWaitWindow,
    Field(discriminator="action"),
]
ACTIONS = tuple(
    field.name for field in task_pb2.GuiAction.DESCRIPTOR.oneofs_by_name["action"].fields
)


def _to_proto(step: Any) -> task_pb2.GuiAction:
    out = task_pb2.GuiAction(
        screenshot_after=step.screenshot_after, max_width=step.max_width, max_height=step.max_height
    )
    name = step.action
    if isinstance(step, GuiScreenshot):
        out.screenshot.CopyFrom(gui_pb2.ScreenshotRequest(max_width=step.max_width, max_height=step.max_height))
    elif isinstance(step, GuiMove):
        out.move.CopyFrom(gui_pb2.MoveMouseRequest(x=step.x, y=step.y))
    elif isinstance(step, GuiClick | GuiDoubleClick | GuiTripleClick):
        count = CLICK_COUNTS.get(name, getattr(step, "count", 1) or 1)
        getattr(out, name).CopyFrom(
            gui_pb2.ClickRequest(x=step.x, y=step.y, button=BUTTONS[step.button], count=count)
        )
    elif isinstance(step, GuiMouseDown):
        out.mouse_down.CopyFrom(gui_pb2.MouseDownRequest(button=BUTTONS[step.button]))
    elif isinstance(step, GuiMouseUp):
        out.mouse_up.CopyFrom(gui_pb2.MouseUpRequest(button=BUTTONS[step.button]))
    elif isinstance(step, GuiDrag):
        out.drag.CopyFrom(
            gui_pb2.DragRequest(
                from_x=step.x, from_y=step.y, to_x=step.to_x, to_y=step.to_y, button=BUTTONS[step.button]
            )
        )
    elif isinstance(step, GuiScroll):
        out.scroll.CopyFrom(
            gui_pb2.ScrollRequest(
                direction=DIRECTIONS[step.direction], amount=step.amount or 1, x=step.x, y=step.y
            )
        )
    elif isinstance(step, GuiType):
        out.type.CopyFrom(gui_pb2.TypeTextRequest(text=step.text))
    elif isinstance(step, GuiKey):
        out.key.CopyFrom(gui_pb2.PressKeyRequest(keys=step.keys or step.text))
    elif isinstance(step, GuiCursorPosition):
        out.cursor_position.SetInParent()
    elif isinstance(step, GuiScreenSize):
        out.screen_size.SetInParent()
    elif isinstance(step, GuiListWindows):
        out.list_windows.SetInParent()
    elif isinstance(step, GuiFocusWindow):
        out.focus_window.CopyFrom(gui_pb2.FocusWindowRequest(window_id=step.window_id))
    elif isinstance(step, GuiWaitWindow):
        out.wait_window.CopyFrom(task_pb2.WaitWindowAction(text=step.text))
    return out


# --- the tool --------------------------------------------------------------------------------


class GuiTool(StepTool[Any, task_pb2.GuiAction]):
    name = "gui"
    model = GuiStep
    needs_desktop = True

    def to_proto(self, step: Any) -> task_pb2.GuiAction:
        return _to_proto(step)

    def check(self, action: task_pb2.GuiAction, where: str) -> None:
        name = action.WhichOneof("action")
        if name is None:
            raise InvalidTask(f"{where} has no action (set one of: {', '.join(ACTIONS)})")
        where = f"{where}.{name}"
        request = getattr(action, name)
        if action.max_width < 0 or action.max_height < 0:
            raise InvalidTask(f"{where}: max_width and max_height must not be negative")
        if name in ("click", "double_click", "triple_click", "mouse_down", "mouse_up", "drag"):
            if request.button not in BUTTON_NAMES and request.button != gui_pb2.MOUSE_BUTTON_UNSPECIFIED:
                raise InvalidTask(f"{where}.button {request.button} is not a mouse button")
        if name == "click" and not 0 <= request.count <= 3:
            raise InvalidTask(f"{where}.count must be 1, 2 or 3, got {request.count}")
        elif name == "scroll":
            if request.direction not in DIRECTION_NAMES and request.direction != gui_pb2.SCROLL_DIRECTION_UNSPECIFIED:
                raise InvalidTask(f"{where}.direction {request.direction} is not a scroll direction")
            if not 0 <= request.amount <= MAX_SCROLL:
                raise InvalidTask(f"{where}.amount must be between 1 and {MAX_SCROLL}, got {request.amount}")
        elif name == "key":
            problem = key_problem(request.keys)
            if problem:
                raise InvalidTask(f"{where}.keys: {problem}")
        elif name == "focus_window" and not request.window_id:
            raise InvalidTask(f"{where}.window_id is empty")
        elif name == "wait_window" and not request.text:
            raise InvalidTask(f"{where}.text is empty: give part of the window's title")
        elif name == "screenshot" and (request.max_width < 0 or request.max_height < 0):
            raise InvalidTask(f"{where}: max_width and max_height must not be negative")

    def describe(self, action: task_pb2.GuiAction) -> str:
        return f"gui {action.WhichOneof('action') or '(no action)'}"

    async def run(self, action: task_pb2.GuiAction, ctx: StepContext) -> StepOutcome:
        name = action.WhichOneof("action")
        if name is None:
            raise StepFailed("the gui step has no action")
        stub = await ctx.gui()
        deadline = time.monotonic() + ctx.timeout

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        async def call(method: Callable[..., Awaitable[Any]], request: Any) -> Any:
            try:
                return await method(request, timeout=left())
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise StepFailed(f"gui {name} timed out after {ctx.timeout:g}s") from None
                if code == grpc.StatusCode.UNAVAILABLE:
                    raise StepFailed(f"the sandbox's gui service is not reachable: {exc.details()}") from None
                raise StepFailed(exc.details() or code.name) from None

        async def screenshot(request: gui_pb2.ScreenshotRequest, suffix: str) -> dict[str, Any]:
            reply = await call(stub.Screenshot, request)
            path = await ctx.save_screenshot(f"step-{ctx.index:03d}{suffix}.png", reply.png)
            return {"screenshot": path, "width": reply.width, "height": reply.height, "scale": reply.scale}

        # A copy: defaults are filled in below, and the task's spec stays as it was sent.
        request = type(getattr(action, name))()
        request.CopyFrom(getattr(action, name))
        result: dict[str, Any] = {"action": name}
        if name == "screenshot":
            result.update(await screenshot(request, ""))
        elif name == "move":
            await call(stub.MoveMouse, request)
        elif name in ("click", "double_click", "triple_click"):
            request.button = request.button or gui_pb2.MOUSE_BUTTON_LEFT
            request.count = CLICK_COUNTS.get(name, request.count or 1)
            await call(stub.Click, request)
        elif name in ("mouse_down", "mouse_up", "drag"):
            request.button = request.button or gui_pb2.MOUSE_BUTTON_LEFT
            methods: dict[str, Callable[..., Awaitable[Any]]] = {
                "mouse_down": stub.MouseDown, "mouse_up": stub.MouseUp, "drag": stub.Drag
            }
            await call(methods[name], request)
        elif name == "scroll":
            request.direction = request.direction or gui_pb2.SCROLL_DIRECTION_DOWN
            request.amount = request.amount or 1
            await call(stub.Scroll, request)
        elif name == "type":
            await call(stub.TypeText, request)
        elif name == "key":
            await call(stub.PressKey, request)
        elif name == "cursor_position":
            reply = await call(stub.CursorPosition, request)
            result.update(x=reply.x, y=reply.y)
        elif name == "screen_size":
            reply = await call(stub.ScreenSize, request)
            result.update(width=reply.width, height=reply.height)
        elif name == "list_windows":
            reply = await call(stub.ListWindows, request)
            result["windows"] = [_window(w) for w in reply.windows]
        elif name == "focus_window":
            await call(stub.FocusWindow, request)
        elif name == "wait_window":
            result["window"] = await _wait_window(call, stub, request.text, ctx.timeout, left)
        if action.screenshot_after and name != "screenshot":
            after = gui_pb2.ScreenshotRequest(max_width=action.max_width, max_height=action.max_height)
            result["after"] = await screenshot(after, "-after")
        stdout = json.dumps(result) + "\n"
        ctx.output("stdout", stdout)
        return StepOutcome.done(stdout)


def _window(w: gui_pb2.Window) -> dict[str, Any]:
    return {"id": w.id, "title": w.title, "x": w.x, "y": w.y, "width": w.width, "height": w.height}


async def _wait_window(
    call: Callable[..., Awaitable[Any]],
    stub: Any,
    title: str,
    timeout: float,
    left: Callable[[], float],
) -> dict[str, Any]:
    while True:
        reply = await call(stub.ListWindows, gui_pb2.ListWindowsRequest())
        for window in reply.windows:
            if title in window.title:
                return _window(window)
        if left() <= 0.1:
            raise StepFailed(f"no window titled like {title!r} appeared within {timeout:g}s")
        await asyncio.sleep(0.1)
