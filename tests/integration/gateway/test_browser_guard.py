"""Attacks a web page can make on a local, keyless gateway through the user's browser, made
with real HTTP against a real gateway (gateway/browser_guard.py):
- CSRF: a form POST (form-encoded or text/plain, no preflight) from a foreign Origin scheduling
  a task -- before, it was accepted (the gateway parsed JSON whatever the content type);
- DNS rebinding: the same request with a foreign Host (evil.example resolved to 127.0.0.1);
- a cross-site websocket to a sandbox's desktop.
Each is refused with a clear error, and what curl and the SDK send still works.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
from harness import Cluster

ONE_STEP = {"steps": [{"tool": "shell", "command": "echo csrf"}]}


def error_of(response: httpx.Response) -> dict[str, str]:
    error: dict[str, str] = response.json()["error"]
    return error


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None]
)
def test_a_body_that_is_not_json_typed_is_refused(api: httpx.Client, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    before = api.get("/v1/tasks").json()["tasks"]
    response = api.post("/schedule", content=json.dumps(ONE_STEP), headers=headers)
    assert response.status_code == 415, response.text
    assert "Content-Type: application/json" in error_of(response)["message"]
    assert api.get("/v1/tasks").json()["tasks"] == before  # nothing was scheduled


def test_a_foreign_origin_cannot_change_state(api: httpx.Client, stack: Cluster) -> None:
    for origin in ("http://evil.example", "null", "http://127.0.0.1:1"):
        response = api.post("/v1/tasks", json=ONE_STEP, headers={"Origin": origin})
        assert response.status_code == 403, (origin, response.text)
        assert f"origin {origin!r}" in error_of(response)["message"]
    # Reading stays open to pages (the API has no cookies to steal); the gateway's own origin
    # and clients without an Origin may change state.
    assert api.get("/v1/tasks", headers={"Origin": "http://evil.example"}).status_code == 200
    own = api.post("/v1/tasks", json=ONE_STEP, headers={"Origin": stack.gateway_url})
    assert own.status_code == 201, own.text
    assert api.post("/v1/tasks", json=ONE_STEP).status_code == 201
    # Each refusal is in the audit log.
    audit = [json.loads(line) for line in (stack.data_dir / "audit.log").read_text().splitlines()]
    refused = [e for e in audit if e.get("event") == "access_refused" and e.get("origin") == "http://evil.example"]
    assert refused and refused[0]["method"] == "POST /v1/tasks", audit[-3:]
    assert "browser guard" in refused[0]["reason"]


def test_a_rebound_host_name_is_refused(api: httpx.Client) -> None:
    for host in ("evil.example", "evil.example:8000", "10.0.0.1", "127.0.0.1.evil.example"):
        response = api.post("/v1/tasks", json=ONE_STEP, headers={"Host": host})
        assert response.status_code == 403, (host, response.text)
        assert "not a loopback name" in error_of(response)["message"]
        assert api.get("/v1/tasks", headers={"Host": host}).status_code == 403
    for host in ("localhost", "localhost:8000", "127.0.0.1", "[::1]:8000", "app.localhost"):
        assert api.get("/v1/tasks", headers={"Host": host}).status_code == 200, host


def test_a_cross_site_websocket_is_refused(stack: Cluster) -> None:
    url = stack.gateway_url.replace("http://", "ws://") + "/v1/sandboxes/sbx-none/vnc/websockify"

    async def attempt() -> str:
        try:
            async with websockets.connect(url, origin=websockets.Origin("http://evil.example"), open_timeout=10) as ws:
                await ws.recv()
        except websockets.InvalidStatus as exc:
            return f"refused:{exc.response.status_code}"
        except websockets.ConnectionClosed as exc:
            return f"closed:{exc.rcvd.code if exc.rcvd else None}"
        return "open"

    assert asyncio.run(attempt()) == "refused:403"
