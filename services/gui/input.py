"""Mouse and keyboard input through xdotool, with arguments checked before anything is sent."""

from __future__ import annotations

import asyncio
import os

from corral.keys import key_problem

# Long text is typed in chunks so a single xdotool call never has to hold it all.
TYPE_CHUNK = 64
TYPE_DELAY_MS = 8
BUTTONS = {"left": 1, "middle": 2, "right": 3}
SCROLL_BUTTONS = {"up": 4, "down": 5, "left": 6, "right": 7}
MAX_SCROLL = 200
XDOTOOL_TIMEOUT = 30.0


class InvalidInput(ValueError):
    """Arguments that cannot be carried out; the message says why."""


class InputFailed(RuntimeError):
    """xdotool itself failed."""


def check_keys(keys: str) -> list[str]:
    """Splits 'ctrl+shift+t Return' into combos, refusing names X does not know."""
    problem = key_problem(keys)
    if problem:
        raise InvalidInput(problem)
    return keys.split()


class Input:
    def __init__(self, display_name: str) -> None:
        self.env = {**os.environ, "DISPLAY": display_name}

    async def _xdotool(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "xdotool", *args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), XDOTOOL_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise InputFailed(f"xdotool {args[0]} did not finish within {XDOTOOL_TIMEOUT:g}s") from None
        if proc.returncode != 0:
            raise InputFailed(f"xdotool {args[0]} failed: {err.decode(errors='replace').strip()}")
        return out.decode(errors="replace")

    async def move(self, x: int, y: int) -> None:
        # No --sync: xdotool would wait forever when the pointer is already there.
        await self._xdotool("mousemove", str(x), str(y))

    async def click(self, x: int, y: int, button: str, count: int) -> None:
        if count not in (1, 2, 3):
            raise InvalidInput(f"count must be 1, 2 or 3, got {count}")
        await self.move(x, y)
        # xdotool sleeps --delay (default 100 ms) after each click: only multi-clicks need one.
        delay = "60" if count > 1 else "0"
        await self._xdotool("click", "--repeat", str(count), "--delay", delay, str(BUTTONS[button]))

    async def mouse_down(self, button: str) -> None:
        await self._xdotool("mousedown", str(BUTTONS[button]))

    async def mouse_up(self, button: str) -> None:
        await self._xdotool("mouseup", str(BUTTONS[button]))

    async def drag(self, from_xy: tuple[int, int], to_xy: tuple[int, int], button: str) -> None:
        await self.move(*from_xy)
        await self.mouse_down(button)
        try:
            # Through the midpoint, so applications see motion while the button is held.
            mid = ((from_xy[0] + to_xy[0]) // 2, (from_xy[1] + to_xy[1]) // 2)
            await self.move(*mid)
            await self.move(*to_xy)
        finally:
            await self.mouse_up(button)

    async def scroll(self, direction: str, amount: int, at: tuple[int, int] | None) -> None:
        if direction not in SCROLL_BUTTONS:
            raise InvalidInput(f"direction must be one of {', '.join(SCROLL_BUTTONS)}, got {direction!r}")
        if not 1 <= amount <= MAX_SCROLL:
            raise InvalidInput(f"amount must be between 1 and {MAX_SCROLL}, got {amount}")
        if at is not None:
            await self.move(*at)
        await self._xdotool("click", "--repeat", str(amount), "--delay", "20", str(SCROLL_BUTTONS[direction]))

    async def type_text(self, text: str) -> None:
        if not text:
            raise InvalidInput("text is empty")
        for start in range(0, len(text), TYPE_CHUNK):
            chunk = text[start : start + TYPE_CHUNK]
            await self._xdotool("type", "--delay", str(TYPE_DELAY_MS), "--", chunk)

    async def press(self, keys: str) -> None:
        combos = check_keys(keys)
        delay = ["--delay", "30"] if len(combos) > 1 else ["--delay", "0"]
        await self._xdotool("key", *delay, "--", *combos)

    async def focus(self, window_id: int) -> None:
        await self._xdotool("windowactivate", "--sync", str(window_id))
