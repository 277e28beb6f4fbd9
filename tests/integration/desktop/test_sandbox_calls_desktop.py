"""A desktop sandbox driven by calls (no tasks): a terminal started by a background command,
clicked and typed into through desktop actions, and the screen returned as PNG bytes."""

from __future__ import annotations

import io
import time

import httpx
from PIL import Image


def test_desktop_calls_click_type_and_screenshot_bytes(api: httpx.Client) -> None:
    created = api.post("/v1/sandboxes", json={"desktop": True, "ttl": 600})
    assert created.status_code == 201, created.text
    sandbox = f"/v1/sandboxes/{created.json()['sandbox_id']}"
    try:
        started = api.post(f"{sandbox}/commands", json={
            "command": "exec xterm -T calls-term -geometry 80x24+0+0", "background": True,
        })
        assert started.status_code == 202, started.text
        waited = api.post(f"{sandbox}/desktop/actions", json={"action": "wait_window", "text": "calls-term"})
        assert waited.status_code == 200 and waited.json()["window"]["title"] == "calls-term", waited.text
        for action in ({"action": "click", "x": 150, "y": 150},
                       {"action": "type", "text": "echo typed-by-a-call > typed.txt\n"}):
            done = api.post(f"{sandbox}/desktop/actions", json=action)
            assert done.status_code == 200 and done.json()["action"] == action["action"], done.text
        ran = api.post(f"{sandbox}/commands", json={
            "command": "for i in $(seq 200); do [ -s typed.txt ] && break; sleep 0.1; done; cat typed.txt",
        })
        assert ran.json()["stdout"] == "typed-by-a-call\n", ran.text

        shot = api.get(f"{sandbox}/desktop/screenshot")
        assert shot.status_code == 200 and shot.headers["content-type"] == "image/png", shot.text[:300]
        image = Image.open(io.BytesIO(shot.content)).convert("RGB")
        assert image.size == (1024, 768)
        # The xterm (white background) at the top left, the bare root window (black) elsewhere.
        assert sum(image.getpixel((150, 150))) > 600 and sum(image.getpixel((1000, 740))) < 60
        small = api.get(f"{sandbox}/desktop/screenshot", params={"max_width": 512})
        assert Image.open(io.BytesIO(small.content)).size == (512, 384)

        after = api.post(f"{sandbox}/desktop/actions", json={"action": "key", "keys": "ctrl+l", "screenshot_after": True})
        assert after.status_code == 200 and after.json()["png_base64"], after.text[:300]
        refused = api.post(f"{sandbox}/desktop/actions", json={"action": "key", "keys": "ctrl+nosuchkey"})
        assert refused.status_code == 400 and "nosuchkey" in refused.text, refused.text
        wanted = {"gui click", "gui type", "gui screenshot"}
        for _ in range(100):  # history is written in the background, in batches
            history = api.get(f"{sandbox}/history").json()["events"]
            if wanted <= {e["action"] for e in history if e["tool"] == "gui"}:
                break
            time.sleep(0.1)
        assert wanted <= {e["action"] for e in history if e["tool"] == "gui"}, history
    finally:
        api.delete(sandbox)
