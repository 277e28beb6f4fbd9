"""noVNC through the gateway in a real browser (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator

import httpx
import pytest
from harness import Cluster
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright

from .conftest import run_task

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail("chromium is missing (scripts/bootstrap installs Debian's chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def desktop_sandbox(api: httpx.Client) -> Iterator[dict[str, str]]:
    sandbox = api.post("/v1/sandboxes", json={"desktop": True, "ttl": 600}).json()
    task = run_task(api, {"sandbox_id": sandbox["sandbox_id"], "steps": [
        {"tool": "shell", "command": "xterm -T watched -geometry 100x30+20+20 >/dev/null 2>&1 &"},
        {"tool": "gui", "action": "wait_window", "text": "watched", "timeout": 60},
    ]})
    assert task["status"] == "completed", task
    try:
        yield sandbox
    finally:
        api.delete(f"/v1/sandboxes/{sandbox['sandbox_id']}")


def light_pixels(page: Page) -> int:
    image = Image.open(io.BytesIO(page.screenshot())).convert("L")
    return sum(image.histogram()[231:])


def wait_for_desktop(page: Page) -> None:
    """Until noVNC's canvas shows the xterm (white) in the page's own screenshot."""
    page.wait_for_selector("#noVNC_container canvas", state="attached", timeout=60_000)
    deadline = time.monotonic() + 60
    while light_pixels(page) < 20_000:
        assert time.monotonic() < deadline, "the desktop never showed in the browser"
        page.wait_for_timeout(250)


def test_novnc_shows_the_desktop(browser: Browser, desktop_sandbox: dict[str, str], desktop_stack: Cluster) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 850})
    try:
        response = page.goto(desktop_stack.gateway_url + desktop_sandbox["vnc_url"])
        assert response is not None and response.status == 200
        assert "/vnc/vnc.html" in page.url and "token" not in page.url
        wait_for_desktop(page)
        status = page.locator("#noVNC_status").text_content() or ""
        assert "Connected" in status or status == "", status
    finally:
        page.close()


def test_view_only_token_shows_the_desktop(
    browser: Browser, desktop_sandbox: dict[str, str], desktop_stack: Cluster
) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 850})
    try:
        page.goto(desktop_stack.gateway_url + desktop_sandbox["vnc_view_url"])
        assert "view_only=1" in page.url
        wait_for_desktop(page)
    finally:
        page.close()


def test_wrong_or_missing_token_is_refused(
    browser: Browser, desktop_sandbox: dict[str, str], desktop_stack: Cluster
) -> None:
    base = f"{desktop_stack.gateway_url}/v1/sandboxes/{desktop_sandbox['sandbox_id']}/vnc/"
    page = browser.new_page()
    try:
        wrong = page.goto(base + "?token=not-the-token")
        assert wrong is not None and wrong.status == 403
        missing = page.goto(base + "vnc.html")
        assert missing is not None and missing.status == 401
        assert page.locator("canvas").count() == 0
    finally:
        page.close()
