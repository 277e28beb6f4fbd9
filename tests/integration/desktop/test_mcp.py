"""`corral mcp` driven by the official `mcp` client library against a real embedded Corral
(both drivers): over stdio it lists Corral's tools, creates and deletes a sandbox, runs a
command, writes and reads a file and returns a screenshot as MCP image content; over
streamable HTTP it refuses a request without an API key and serves one that has it."""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import anyio
import httpx
import pytest
from harness import Cluster
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp_harness import call_over_http, mcp_env, mcp_http_server, text_of
from mcp_types import ImageContent

from corral import Sandbox

EXPECTED_TOOLS = {
    "create_sandbox", "list_sandboxes", "delete_sandbox", "run_shell", "run_python", "run_typescript",
    "read_file", "write_file", "list_files", "screenshot", "click", "type_text", "press_key", "scroll",
    "drag", "run_task",
}


@pytest.mark.timeout(180)
def test_an_mcp_client_uses_corral_over_stdio(desktop_stack: Cluster, desktop_sandbox: Sandbox) -> None:
    server = StdioServerParameters(command=sys.executable, args=["-m", "corral.cli", "mcp"], env=mcp_env(desktop_stack))
    sandbox_id = desktop_sandbox.id

    async def session() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with stdio_client(server) as (read, write), ClientSession(read, write) as mcp:
            await mcp.initialize()
            tools = (await mcp.list_tools()).tools
            seen["tools"] = {t.name: t for t in tools}
            seen["run"] = text_of(await mcp.call_tool("run_shell", {"sandbox_id": sandbox_id, "command": "echo hi; exit 3"}))
            seen["python"] = text_of(await mcp.call_tool("run_python", {"sandbox_id": sandbox_id, "code": "print(6 * 7)"}))
            seen["write"] = text_of(await mcp.call_tool(
                "write_file", {"sandbox_id": sandbox_id, "path": "notes/mcp.txt", "content": "written over MCP\n"}
            ))
            seen["read"] = text_of(await mcp.call_tool("read_file", {"sandbox_id": sandbox_id, "path": "notes/mcp.txt"}))
            seen["list"] = json.loads(text_of(await mcp.call_tool("list_files", {"sandbox_id": sandbox_id, "path": "notes"})))
            seen["shot"] = await mcp.call_tool("screenshot", {"sandbox_id": sandbox_id, "max_width": 512})
            created = json.loads(text_of(await mcp.call_tool("create_sandbox", {"ttl": 300})))
            listed = json.loads(text_of(await mcp.call_tool("list_sandboxes", {})))
            seen["listed"] = {s["sandbox_id"] for s in listed}
            seen["created"] = created["sandbox_id"]
            seen["deleted"] = text_of(await mcp.call_tool("delete_sandbox", {"sandbox_id": created["sandbox_id"]}))
            seen["unknown"] = await mcp.call_tool("run_shell", {"sandbox_id": "sbx-nope", "command": "true"})
        return seen

    seen = anyio.run(session)
    assert EXPECTED_TOOLS <= set(seen["tools"]), sorted(seen["tools"])
    click = seen["tools"]["click"]
    assert "x" in click.input_schema["properties"] and "pixels" in click.input_schema["properties"]["x"]["description"]
    assert seen["run"].startswith("exit code: 3\n") and "--- stdout ---\nhi\n" in seen["run"], seen["run"]
    assert "42" in seen["python"]
    assert seen["read"] == "written over MCP\n"
    assert [e["name"] for e in seen["list"]] == ["mcp.txt"]
    shot = seen["shot"]
    assert not shot.is_error, shot
    image = next(c for c in shot.content if isinstance(c, ImageContent))
    assert image.mime_type == "image/png"
    assert base64.b64decode(image.data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert sandbox_id in seen["listed"] and seen["created"] in seen["listed"]
    assert seen["deleted"] == f"sandbox {seen['created']} deleted"
    assert seen["unknown"].is_error and "NOT_FOUND" in seen["unknown"].content[0].text, seen["unknown"]


@pytest.mark.timeout(180)
def test_the_http_transport_needs_an_api_key(desktop_stack: Cluster, desktop_sandbox: Sandbox) -> None:
    with mcp_http_server(desktop_stack) as url:
        refused = httpx.post(url, json={}, timeout=30)
        assert refused.status_code == 401 and "API key" in refused.json()["error"]["message"]
        (ran,) = anyio.run(call_over_http, url, "crl_dev", [
            ("run_shell", {"sandbox_id": desktop_sandbox.id, "command": "echo over http"}),
        ])
    assert "--- stdout ---\nover http\n" in text_of(ran)
