"""GUI steps in tasks: a real xterm in the sandbox's desktop, driven by clicks and typing."""

from __future__ import annotations

import io
import json

import httpx
from harness import Cluster
from PIL import Image

from .conftest import host_task_dir, run_task

TERMINAL = {"tool": "shell", "command": "xterm -T corral-term -geometry 80x24+0+0 >/dev/null 2>&1 &"}


def test_terminal_typed_into_writes_a_file_and_screenshot_is_saved(
    api: httpx.Client, desktop_stack: Cluster, sandbox_driver: str
) -> None:
    """The issue's 'done when': open a terminal, type a command that writes a file, screenshot."""
    task = run_task(api, {"steps": [
        TERMINAL,
        {"tool": "gui", "action": "wait_window", "text": "corral-term", "timeout": 60},
        {"tool": "gui", "action": "click", "x": 150, "y": 150},
        {"tool": "gui", "action": "type", "text": "echo typed-in-the-desktop > from_gui.txt\n"},
        {"tool": "shell", "command":
            "for i in $(seq 200); do [ -s from_gui.txt ] && break; sleep 0.1; done; cat from_gui.txt"},
        {"tool": "gui", "action": "screenshot"},
        {"tool": "gui", "action": "screenshot", "max_width": 512},
        {"tool": "gui", "action": "list_windows"},
    ]})
    assert task["status"] == "completed", task
    steps = task["steps"]
    assert steps[4]["stdout"] == "typed-in-the-desktop\n"
    host_dir = host_task_dir(desktop_stack, task)
    assert (host_dir / "from_gui.txt").read_text() == "typed-in-the-desktop\n"
    assert f"({sandbox_driver})" in (host_dir / "agent.log").read_text()

    shot = json.loads(steps[5]["stdout"])
    assert shot["screenshot"] == f"{task['task_dir']}/screenshots/step-005.png"
    assert (shot["width"], shot["height"], shot["scale"]) == (1024, 768, 1.0)
    image = Image.open(host_dir / "screenshots" / "step-005.png").convert("RGB")
    assert image.size == (1024, 768)
    # The xterm (white background) at the top left, the bare root window (black) elsewhere.
    assert sum(image.getpixel((150, 150))) > 600
    assert sum(image.getpixel((1000, 740))) < 60

    small = json.loads(steps[6]["stdout"])
    assert (small["width"], small["height"], small["scale"]) == (512, 384, 2.0)
    assert Image.open(host_dir / "screenshots" / "step-006.png").size == (512, 384)

    windows = json.loads(steps[7]["stdout"])["windows"]
    assert any(w["title"] == "corral-term" for w in windows), windows

    history = api.get(f"/v1/tasks/{task['task_id']}/history").json()["events"]
    assert any("screenshots/step-005.png" in e.get("stdout", "") for e in history)


def test_window_title_keys_and_screenshot_after(api: httpx.Client) -> None:
    task = run_task(api, {"steps": [
        TERMINAL,
        {"tool": "gui", "action": "wait_window", "text": "corral-term", "timeout": 60},
        {"tool": "gui", "action": "click", "x": 150, "y": 150},
        # xterm sets its title from this escape sequence: the effect shows in the window list.
        {"tool": "gui", "action": "type", "text": "printf '\\033]2;%s\\007' renamed-by-keys"},
        {"tool": "gui", "action": "key", "keys": "Return", "screenshot_after": True},
        {"tool": "gui", "action": "wait_window", "text": "renamed-by-keys", "timeout": 30},
        {"tool": "gui", "action": "cursor_position"},
        {"tool": "gui", "action": "screen_size"},
    ]})
    assert task["status"] == "completed", task
    steps = task["steps"]
    after = json.loads(steps[4]["stdout"])["after"]
    assert after["screenshot"].endswith("/screenshots/step-004-after.png")
    assert json.loads(steps[5]["stdout"])["window"]["title"] == "renamed-by-keys"
    assert json.loads(steps[6]["stdout"]) == {"action": "cursor_position", "x": 150, "y": 150}
    assert json.loads(steps[7]["stdout"])["width"] == 1024


def test_bad_coordinates_and_keys_are_refused_with_a_reason(api: httpx.Client) -> None:
    # What can be checked without the screen is refused at submission, naming the field.
    for step, message in (
        ({"action": "key", "keys": "ctrl+notakey"}, "steps[0].keys: unknown key 'notakey'"),
        ({"action": "fly"}, "steps[0].action: unknown gui action 'fly'"),
    ):
        response = api.post("/v1/tasks", json={"steps": [{"tool": "gui", **step}]})
        assert response.status_code == 400, response.text
        assert message in response.json()["error"]["message"]
    # What needs the screen fails the step with the reason.
    task = run_task(api, {"steps": [
        {"tool": "gui", "action": "click", "x": 5000, "y": 10, "continue_on_error": True},
        {"tool": "gui", "action": "focus_window", "window_id": "12345", "continue_on_error": True},
        {"tool": "gui", "action": "screen_size"},
    ]})
    steps = task["steps"]
    assert "off the screen" in steps[0]["error"], steps[0]
    assert "no window" in steps[1]["error"], steps[1]
    # The gui service survived all of it.
    assert steps[2]["status"] == "completed", steps[2]
    assert [s["status"] for s in steps[:2]] == ["failed"] * 2


def test_screenshot_png_is_valid(api: httpx.Client, desktop_stack: Cluster) -> None:
    task = run_task(api, {"steps": [{"tool": "gui", "action": "screenshot", "max_height": 300}]})
    assert task["status"] == "completed", task
    path = host_task_dir(desktop_stack, task) / "screenshots" / "step-000.png"
    image = Image.open(io.BytesIO(path.read_bytes()))
    assert image.format == "PNG" and image.height == 300
