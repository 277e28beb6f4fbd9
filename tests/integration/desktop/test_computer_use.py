"""Anthropic's computer-use tools on a real desktop sandbox (both drivers): the `computer` tool
drives a real xterm (typed command, Return, its effect on a file; screenshots at the scaled
size; zoom; cursor_position through the scaling), the `bash` tool keeps its shell between
calls, and the text editor's create/view/str_replace/insert/undo act on a real file.

One desktop sandbox for the package's tests (conftest's desktop_sandbox): desktops are slow to start."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import pytest
from PIL import Image

from corral import Sandbox

# Half the sandbox's 1024x768 screen: the model's coordinates are scaled up by 2.
DISPLAY = {"display_width_px": 512, "display_height_px": 384}


@pytest.fixture
def sb(desktop_sandbox: Sandbox) -> Sandbox:
    return desktop_sandbox


def only_text(result: dict[str, Any]) -> str:
    assert result["type"] == "tool_result", result
    assert result["is_error"] is False, result
    return "".join(block["text"] for block in result["content"] if block["type"] == "text")


def png_of(result: dict[str, Any]) -> Image.Image:
    assert result["is_error"] is False, result
    (block,) = result["content"]
    assert block["type"] == "image" and block["source"]["media_type"] == "image/png", block
    data = base64.b64decode(block["source"]["data"])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data))


def computer(sb: Sandbox, action: str, **params: Any) -> dict[str, Any]:
    return sb.computer(action, **DISPLAY, **params)


@pytest.mark.timeout(150)
def test_the_computer_tool_drives_a_real_xterm(sb: Sandbox) -> None:
    assert sb.computer_tool() == {
        "type": "computer_20251124", "name": "computer", "display_width_px": 1024, "display_height_px": 768,
        "enable_zoom": True,
    }
    sb.run_shell("xterm -T cu-term -geometry 80x24+0+0 >/dev/null 2>&1 &")
    window = sb.desktop("wait_window", text="cu-term", timeout=60)["window"]
    # The window's middle, in the model's (half-size) space.
    middle = [(window["x"] + window["width"] // 2) // 2, (window["y"] + window["height"] // 2) // 2]
    assert "left_click" in only_text(computer(sb, "left_click", coordinate=middle))
    only_text(computer(sb, "type", text="echo $((6 * 7)) > /workspace/from-xterm.txt"))
    only_text(computer(sb, "key", text="Return"))
    deadline = time.monotonic() + 30
    while sb.run_shell("cat /workspace/from-xterm.txt 2>/dev/null").stdout != "42\n":
        assert time.monotonic() < deadline, "the command typed into the xterm did not run"
        time.sleep(0.2)

    shot = png_of(computer(sb, "screenshot"))
    assert shot.size == (512, 384)
    # The xterm's white background at its middle, the bare root (black) far from it.
    assert shot.convert("RGB").getpixel((middle[0], middle[1] + 20)) == (255, 255, 255)
    assert shot.convert("RGB").getpixel((500, 370)) == (0, 0, 0)

    # zoom: the region (model space) at the display's size, keeping its proportions.
    zoomed = png_of(computer(sb, "zoom", region=[0, 0, 128, 96]))
    assert zoomed.size == (512, 384)
    assert zoomed.convert("RGB").getpixel((256, 192)) == (255, 255, 255)

    # cursor_position through the scaling: the model's 100, 50 is the screen's 200, 100.
    only_text(computer(sb, "mouse_move", coordinate=[100, 50]))
    assert only_text(computer(sb, "cursor_position")) == "X=100,Y=50"
    assert sb.desktop("cursor_position")["x"] == 200 and sb.desktop("cursor_position")["y"] == 100

    for action, params in [
        ("middle_click", {}), ("right_click", {"coordinate": middle}), ("key", {"text": "Escape"}),
        ("double_click", {"coordinate": middle}), ("triple_click", {"coordinate": middle}),
        ("left_mouse_down", {"coordinate": middle}), ("left_mouse_up", {}),
        ("left_click_drag", {"start_coordinate": middle, "coordinate": [middle[0] + 20, middle[1]]}),
        ("scroll", {"coordinate": middle, "scroll_direction": "up", "scroll_amount": 2}),
        ("left_click", {"coordinate": middle, "text": "shift"}),
        ("hold_key", {"text": "shift", "duration": 0.2}),
    ]:
        only_text(computer(sb, action, **params))
    assert png_of(computer(sb, "wait", duration=0.1)).size == (512, 384)

    # The model's mistakes come back to it as is_error results, saying what was wrong.
    off = computer(sb, "left_click", coordinate=[600, 10])
    assert off["is_error"] is True and "out of bounds" in off["content"][0]["text"], off
    unknown = sb.computer_use("computer", {"action": "fly"}, tool_use_id="toolu_9")
    assert unknown["is_error"] is True and unknown["tool_use_id"] == "toolu_9", unknown
    assert "unknown action 'fly'" in unknown["content"][0]["text"]


@pytest.mark.timeout(90)
def test_the_bash_tool_keeps_its_shell_between_calls(sb: Sandbox) -> None:
    assert only_text(sb.bash("cd /tmp && export GREETING=hello && f() { echo \"f:$1\"; }")) == ""
    assert only_text(sb.bash("pwd; echo $GREETING; f 42")) == "/tmp\nhello\nf:42"
    assert only_text(sb.bash("echo oops >&2; false")) == "oops\n(exit code 1)"
    # A command reading stdin gets /dev/null, not the next call.
    assert only_text(sb.bash("cat; echo after")) == "after"
    assert only_text(sb.bash(restart=True)) == "tool has been restarted."
    assert only_text(sb.bash("echo \"[$GREETING]\"; pwd")) == "[]\n/workspace"


@pytest.mark.timeout(90)
def test_the_text_editor_edits_a_real_file(sb: Sandbox) -> None:
    path = "/workspace/edited.py"

    def edit(command: str, **params: Any) -> dict[str, Any]:
        return sb.text_editor(command, path, **params)

    assert only_text(edit("create", file_text="a = 1\nb = 2\nb = 2\n")) == f"File created successfully at: {path}"
    assert only_text(edit("view")) == (
        f"Here's the result of running `cat -n` on {path}:\n     1\ta = 1\n     2\tb = 2\n     3\tb = 2\n     4\t\n"
    )
    assert only_text(edit("view", view_range=[2, 2])).endswith("     2\tb = 2\n")
    twice = edit("str_replace", old_str="b = 2", new_str="b = 3")
    assert twice["is_error"] is True
    assert twice["content"][0]["text"] == (
        "No replacement was performed. Multiple occurrences of old_str `b = 2` in lines [2, 3]. Please ensure it is unique"
    )
    missing = edit("str_replace", old_str="zzz", new_str="")
    assert missing["content"][0]["text"] == f"No replacement was performed, old_str `zzz` did not appear verbatim in {path}."
    assert f"The file {path} has been edited." in only_text(edit("str_replace", old_str="a = 1", new_str="a = 10"))
    assert "has been edited" in only_text(edit("insert", insert_line=1, new_str="import os"))
    assert sb.read_file(path) == "a = 10\nimport os\nb = 2\nb = 2\n"
    assert "undone successfully" in only_text(edit("undo_edit"))
    assert sb.read_file(path) == "a = 10\nb = 2\nb = 2\n"
    only_text(edit("undo_edit"))
    assert sb.read_file(path) == "a = 1\nb = 2\nb = 2\n"
    exists = edit("create", file_text="x")
    assert exists["content"][0]["text"] == f"File already exists at: {path}. Cannot overwrite files using command `create`."
    relative = sb.text_editor("view", "edited.py")
    assert relative["is_error"] is True and "is not an absolute path" in relative["content"][0]["text"]
    listing = only_text(sb.text_editor("view", "/workspace"))
    assert "up to 2 levels deep in /workspace" in listing and path in listing
