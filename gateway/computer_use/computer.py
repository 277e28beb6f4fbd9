"""Anthropic's `computer` tool (computer_20250124 / computer_20251124 actions) on a sandbox's
desktop, through the gui service's actions.

Display scaling: the model sees and clicks in a scaled-down space (Anthropic's advice for
large screens: at most 1568 px on the long edge and about 1.15 megapixels), or the size the
caller declared to the model (display_width_px / display_height_px); coordinates are scaled
up to the screen's before they are carried out, and cursor_position is scaled down.
Modifier keys held during a click or scroll, and hold_key, are xdotool runs in the sandbox
(its commands have the desktop's DISPLAY): the gui service has no key-down of its own.
"""

from __future__ import annotations

import asyncio
import io
import math
import shlex
from dataclasses import dataclass
from typing import Any

from PIL import Image

from corral.keys import key_problem
from gateway.computer_use.ops import SandboxOps
from gateway.computer_use.results import ToolInputError, image, text

MAX_LONG_EDGE = 1568
MAX_PIXELS = 1_150_000
# As Anthropic's reference implementation: a wait or a held key of at most 100 s.
MAX_DURATION_SECONDS = 100.0
MAX_SCROLL = 200
CLICKS = {
    "left_click": ("left", 1), "right_click": ("right", 1), "middle_click": ("middle", 1),
    "double_click": ("left", 2), "triple_click": ("left", 3),
}
ACTIONS = (
    "screenshot", *CLICKS, "mouse_move", "left_click_drag", "left_mouse_down", "left_mouse_up",
    "key", "hold_key", "type", "scroll", "wait", "cursor_position", "zoom",
)
XDOTOOL_BUTTONS = {"left": "1", "middle": "2", "right": "3"}
SCROLL_BUTTONS = {"up": "4", "down": "5", "left": "6", "right": "7"}


def scaled_size(width: int, height: int) -> tuple[int, int]:
    """The screen's size in the model's space: downscaled to Anthropic's image limits."""
    factor = min(1.0, MAX_LONG_EDGE / max(width, height), math.sqrt(MAX_PIXELS / (width * height)))
    return max(1, math.floor(width * factor)), max(1, math.floor(height * factor))


@dataclass(frozen=True)
class Display:
    """The screen's real size and the model's (scaled) one."""

    width: int
    height: int
    model_width: int
    model_height: int

    def to_screen(self, x: int, y: int) -> tuple[int, int]:
        return (
            min(self.width - 1, round(x * self.width / self.model_width)),
            min(self.height - 1, round(y * self.height / self.model_height)),
        )

    def to_model(self, x: int, y: int) -> tuple[int, int]:
        return round(x * self.model_width / self.width), round(y * self.model_height / self.height)

    def point(self, value: Any, name: str = "coordinate") -> tuple[int, int]:
        """A model [x, y], checked, in screen pixels."""
        if (
            not isinstance(value, list | tuple) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise ToolInputError(f"{name} must be a list of two integers [x, y], got {value!r}")
        x, y = value
        if not (0 <= x < self.model_width and 0 <= y < self.model_height):
            raise ToolInputError(
                f"{name} {value} is out of bounds: x must be in 0..{self.model_width - 1}, "
                f"y in 0..{self.model_height - 1} (the display is {self.model_width}x{self.model_height})"
            )
        return self.to_screen(x, y)


# Screen sizes never change for a sandbox's desktop: asked once per sandbox.
_SCREENS: dict[str, tuple[int, int]] = {}


async def display_of(ops: SandboxOps, declared: tuple[int, int] | None) -> Display:
    screen = _SCREENS.get(ops.sandbox_id)
    if screen is None:
        result, _ = await ops.desktop({"action": "screen_size"})
        screen = int(result["width"]), int(result["height"])
        if len(_SCREENS) > 10_000:
            _SCREENS.clear()
        _SCREENS[ops.sandbox_id] = screen
    width, height = screen
    model = declared or scaled_size(width, height)
    return Display(width, height, *model)


def _need(params: dict[str, Any], name: str, kind: type, action: str) -> Any:
    value = params.get(name)
    if value is None:
        raise ToolInputError(f"{name} is required for action {action}")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ToolInputError(f"{name} must be a {kind.__name__} for action {action}, got {value!r}")
    return value


def _duration(params: dict[str, Any], action: str) -> float:
    value = params.get("duration")
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ToolInputError(f"duration (seconds) must be a number for action {action}, got {value!r}")
    if not 0 <= value <= MAX_DURATION_SECONDS:
        raise ToolInputError(f"duration must be between 0 and {MAX_DURATION_SECONDS:g} seconds, got {value}")
    return float(value)


def _keys(value: str, name: str = "text") -> list[str]:
    problem = key_problem(value)
    if problem:
        raise ToolInputError(f"{name}: {problem}")
    return value.split()


def _modifiers(params: dict[str, Any]) -> list[str]:
    """Keys held during a click or scroll: `text` (computer_20251124) or `key` (20250124)."""
    value = params.get("text") or params.get("key")
    if value is None or value == "":
        return []
    if not isinstance(value, str):
        raise ToolInputError(f"text (the modifier keys to hold) must be a string, got {value!r}")
    return _keys(value)


async def _xdotool(ops: SandboxOps, args: list[str], timeout: float = 30.0) -> None:
    result = await ops.shell("xdotool " + " ".join(shlex.quote(a) for a in args), timeout=timeout)
    if result.exit_code != 0:
        raise ToolInputError(f"xdotool failed: {(result.stderr or result.error).strip()}")


def _zoomed(png: bytes, box: tuple[int, int, int, int], fit: tuple[int, int]) -> bytes:
    """The screen's `box`, scaled to fit `fit` (keeping its proportions)."""
    with Image.open(io.BytesIO(png)) as shot:
        region = shot.convert("RGB").crop(box)
    factor = min(fit[0] / region.width, fit[1] / region.height)
    size = (max(1, round(region.width * factor)), max(1, round(region.height * factor)))
    out = io.BytesIO()
    region.resize(size, Image.Resampling.LANCZOS).save(out, format="PNG", compress_level=1)
    return out.getvalue()


async def screenshot(ops: SandboxOps, display: Display) -> dict[str, Any]:
    size = (display.model_width, display.model_height)
    _, png = await ops.desktop({"action": "screenshot", "max_width": size[0], "max_height": size[1]})
    # The gui keeps the screen's proportions; a declared size of others is met exactly here.
    return image(await asyncio.to_thread(_exact, png, size))


def _exact(png: bytes, size: tuple[int, int]) -> bytes:
    with Image.open(io.BytesIO(png)) as shot:
        if shot.size == size:
            return png
        out = io.BytesIO()
        shot.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(out, format="PNG", compress_level=1)
        return out.getvalue()


async def run(ops: SandboxOps, params: dict[str, Any], display: Display) -> list[dict[str, Any]]:
    """Carries out one action; the tool_result content."""
    action = params.get("action")
    if action not in ACTIONS:
        raise ToolInputError(f"unknown action {action!r}; the computer tool's actions are: {', '.join(ACTIONS)}")
    if action == "screenshot":
        return [await screenshot(ops, display)]
    if action in CLICKS:
        button, count = CLICKS[action]
        if params.get("coordinate") is not None:
            x, y = display.point(params["coordinate"])
        else:
            where, _ = await ops.desktop({"action": "cursor_position"})
            x, y = int(where["x"]), int(where["y"])
        held = _modifiers(params)
        if held:
            combo = "+".join(held)
            await _xdotool(ops, ["mousemove", str(x), str(y), "keydown", combo, "click", "--repeat", str(count),
                                 XDOTOOL_BUTTONS[button], "keyup", combo])
        else:
            await ops.desktop({"action": "click", "x": x, "y": y, "button": button, "count": count})
        mx, my = display.to_model(x, y)
        return [text(f"{action} at ({mx}, {my})")]
    if action == "mouse_move":
        x, y = display.point(params.get("coordinate"))
        await ops.desktop({"action": "move", "x": x, "y": y})
        return [text(f"moved the mouse to {list(display.to_model(x, y))}")]
    if action == "left_click_drag":
        start = display.point(params.get("start_coordinate"), "start_coordinate")
        end = display.point(params.get("coordinate"))
        await ops.desktop({"action": "drag", "x": start[0], "y": start[1], "to_x": end[0], "to_y": end[1]})
        return [text(f"dragged from {list(display.to_model(*start))} to {list(display.to_model(*end))}")]
    if action in ("left_mouse_down", "left_mouse_up"):
        if params.get("coordinate") is not None:
            x, y = display.point(params["coordinate"])
            await ops.desktop({"action": "move", "x": x, "y": y})
        await ops.desktop({"action": "mouse_down" if action == "left_mouse_down" else "mouse_up", "button": "left"})
        return [text("pressed the left button" if action == "left_mouse_down" else "released the left button")]
    if action == "key":
        keys = _need(params, "text", str, action)
        _keys(keys)
        await ops.desktop({"action": "key", "keys": keys})
        return [text(f"pressed {keys}")]
    if action == "hold_key":
        keys = _keys(_need(params, "text", str, action))
        seconds = _duration(params, action)
        combo = "+".join(keys)
        await _xdotool(ops, ["keydown", combo, "sleep", f"{seconds:g}", "keyup", combo], timeout=seconds + 30)
        return [text(f"held {combo} for {seconds:g}s")]
    if action == "type":
        typed = _need(params, "text", str, action)
        if typed:
            await ops.desktop({"action": "type", "text": typed})
        return [text(f"typed {len(typed)} characters")]
    if action == "scroll":
        return [text(await _scroll(ops, params, display))]
    if action == "wait":
        await asyncio.sleep(_duration(params, action))
        return [await screenshot(ops, display)]
    if action == "cursor_position":
        where, _ = await ops.desktop({"action": "cursor_position"})
        x, y = display.to_model(int(where["x"]), int(where["y"]))
        return [text(f"X={x},Y={y}")]
    return [await _zoom(ops, params, display)]


async def _scroll(ops: SandboxOps, params: dict[str, Any], display: Display) -> str:
    direction = params.get("scroll_direction")
    if direction not in SCROLL_BUTTONS:
        raise ToolInputError(f"scroll_direction must be one of up, down, left, right, got {direction!r}")
    amount = params.get("scroll_amount", 1)
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 <= amount <= MAX_SCROLL:
        raise ToolInputError(f"scroll_amount (wheel clicks) must be an integer in 0..{MAX_SCROLL}, got {amount!r}")
    at = display.point(params["coordinate"]) if params.get("coordinate") is not None else None
    if amount == 0:
        return "scrolled 0 clicks"
    held = _modifiers(params)
    if held:
        combo = "+".join(held)
        move = ["mousemove", str(at[0]), str(at[1])] if at else []
        await _xdotool(ops, [*move, "keydown", combo, "click", "--repeat", str(amount), "--delay", "20",
                             SCROLL_BUTTONS[direction], "keyup", combo])
    else:
        document: dict[str, Any] = {"action": "scroll", "direction": direction, "amount": amount}
        if at:
            document.update(x=at[0], y=at[1])
        await ops.desktop(document)
    return f"scrolled {direction} {amount} clicks"


async def _zoom(ops: SandboxOps, params: dict[str, Any], display: Display) -> dict[str, Any]:
    region = params.get("region")
    if (
        not isinstance(region, list | tuple) or len(region) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in region)
    ):
        raise ToolInputError(f"region must be [x0, y0, x1, y1] (four integers), got {region!r}")
    x0, y0, x1, y1 = region
    if not (0 <= x0 < x1 <= display.model_width and 0 <= y0 < y1 <= display.model_height):
        raise ToolInputError(
            f"region {list(region)} must have 0 <= x0 < x1 <= {display.model_width} and "
            f"0 <= y0 < y1 <= {display.model_height} (the display is {display.model_width}x{display.model_height})"
        )
    sx, sy = display.width / display.model_width, display.height / display.model_height
    box = (round(x0 * sx), round(y0 * sy), max(round(x0 * sx) + 1, round(x1 * sx)), max(round(y0 * sy) + 1, round(y1 * sy)))
    _, png = await ops.desktop({"action": "screenshot"})
    zoomed = await asyncio.to_thread(_zoomed, png, box, (display.model_width, display.model_height))
    return image(zoomed)
