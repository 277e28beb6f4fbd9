"""Jupyter Lab in a sandbox through the gateway: a kernel started over the proxy (REST), code
sent over the proxied websocket reads a file a task wrote."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import websockets
from harness import Cluster

from .conftest import run_task


async def execute(url: str, token: str, code: str) -> str:
    """Runs `code` on the kernel behind `url` (its /channels websocket), returns its stdout."""
    msg_id = uuid.uuid4().hex
    request = {
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                   "session": uuid.uuid4().hex, "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }
    output = []
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.send(json.dumps(request))
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if message["msg_type"] == "stream":
                output.append(message["content"]["text"])
            elif message["msg_type"] == "error":
                raise AssertionError(message["content"])
            elif message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                return "".join(output)


def test_kernel_through_the_proxy_reads_a_file_the_task_wrote(api: httpx.Client, desktop_stack: Cluster) -> None:
    created = api.post("/v1/sandboxes", json={}).json()
    sandbox_id, token = created["sandbox_id"], created["token"]
    base = f"/v1/sandboxes/{sandbox_id}/jupyter"
    try:
        task = run_task(api, {"sandbox_id": sandbox_id, "steps": [
            {"tool": "write_file", "path": "data.txt", "content": "written by a task"}]})
        assert task["status"] == "completed", task

        assert api.get(f"{base}/api/status").status_code == 401
        assert api.get(f"{base}/api/status", params={"token": "wrong"}).status_code == 403
        view = api.get(f"{base}/api/status", params={"token": created["view_token"]})
        assert view.status_code == 403

        # The first visit starts Jupyter; ?token= sets the cookie later requests carry.
        lab = api.get(f"{base}/lab", params={"token": token})
        assert lab.status_code == 200, lab.text[:500]
        assert "JupyterLab" in lab.text
        # No "get Jupyter news?" popup: its plugin is disabled in the page's config.
        page_config = lab.text.split('id="jupyter-config-data" type="application/json">', 1)[1]
        config = json.loads(page_config.split("</script>", 1)[0])
        assert "@jupyterlab/apputils-extension:announcements" in config["disabledExtensions"]
        assert api.cookies.get(f"corral_sandbox_{sandbox_id}") == token

        kernel = api.post(f"{base}/api/kernels", json={"name": "python3"},
                          headers={"Authorization": f"Bearer {token}"})
        assert kernel.status_code == 201, kernel.text
        kernel_id = kernel.json()["id"]
        # Jupyter is rooted at the sandbox's workspace, where the task wrote.
        contents = api.get(f"{base}/api/contents/").json()
        assert "data.txt" in [item["name"] for item in contents["content"]]

        ws_url = desktop_stack.gateway_url.replace("http", "ws", 1) + f"{base}/api/kernels/{kernel_id}/channels"
        code = "print(open('/workspace/data.txt').read().upper())"
        assert asyncio.run(execute(ws_url, token, code)) == "WRITTEN BY A TASK\n"
    finally:
        api.cookies.clear()
        api.delete(f"/v1/sandboxes/{sandbox_id}")
