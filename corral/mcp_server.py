"""`corral mcp`: Corral's sandboxes as MCP tools, for any MCP client (Claude Desktop, Claude
Code, Cursor, an agent built on an MCP client library).

Built on the official `mcp` SDK's MCPServer, over Corral's own Python SDK (REST to the
gateway at CORRAL_URL, with CORRAL_API_KEY). Two transports:
- stdio (the default): the client starts `corral mcp` and the server acts with CORRAL_API_KEY;
- streamable HTTP (`--http`): at http://HOST:PORT/mcp, every request must carry
  `Authorization: Bearer <a Corral API key>`, which is the key the tools use at the gateway
  (so each client acts as its own tenant, and the gateway decides what it may do).
Tool failures (an unknown sandbox, a refused argument, a gateway that is down) come back as
MCP tool errors saying what was wrong.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ImageContent, TextContent, ToolAnnotations
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from corral import errors
from corral.sdk import calls
from corral.sdk.aio import AsyncClient, AsyncSandbox, run_task_async
from corral.sdk.results import CommandResult

INSTRUCTIONS = """Corral runs code in isolated sandboxes (Linux, Python 3, Node/TypeScript; a
desktop with X11 apps when created with desktop=true). Typical use: create_sandbox, then
run_shell / run_python / write_file / read_file on its id (files live in /workspace, the
working directory), screenshot + click/type_text/press_key for desktop apps, and
delete_sandbox when done. run_task runs steps in a fresh sandbox that is removed after."""

Content = list[TextContent | ImageContent]
SandboxId = Annotated[str, Field(description="The sandbox's id, as create_sandbox or list_sandboxes gave it.")]
X = Annotated[int, Field(description="Screen x in pixels from the left edge (full-size screen coordinates).")]
Y = Annotated[int, Field(description="Screen y in pixels from the top edge (full-size screen coordinates).")]
Timeout = Annotated[float, Field(gt=0, le=3600, description="Seconds before the run is killed (default 60).")]
Cwd = Annotated[str, Field(description="Working directory, relative to /workspace (default: /workspace).")]
FilePath = Annotated[
    str, Field(description="A path relative to /workspace, or absolute inside /workspace or /tmp.")
]


def _bearer(ctx: Context) -> str | None:
    """The API key of an HTTP request (checked present by require_bearer); None on stdio."""
    request = getattr(ctx.request_context, "request", None)
    if isinstance(request, Request):
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
    return None


class Tools:
    """The tools' bodies: each opens a client to the gateway for the call and maps failures."""

    def __init__(self, url: str | None, api_key: str | None) -> None:
        self.url, self.api_key = url, api_key

    def client(self, ctx: Context) -> AsyncClient:
        return AsyncClient(self.url, _bearer(ctx) or self.api_key, timeout=calls.COMPUTER_USE_TIMEOUT)

    async def on_sandbox(self, ctx: Context, sandbox_id: str, work: Callable[[AsyncSandbox], Awaitable[Any]]) -> Any:
        client = self.client(ctx)
        try:
            return await work(AsyncSandbox(client, {"sandbox_id": sandbox_id}, owned=False))
        except errors.CorralError as exc:
            raise ToolError(f"{exc.code}: {exc.message}") from None
        finally:
            await client.close()

    async def on_client(self, ctx: Context, work: Callable[[AsyncClient], Awaitable[Any]]) -> Any:
        client = self.client(ctx)
        try:
            return await work(client)
        except errors.CorralError as exc:
            raise ToolError(f"{exc.code}: {exc.message}") from None
        finally:
            await client.close()


def command_text(result: CommandResult) -> str:
    """A command's result as the model reads it: exit code first, then both streams."""
    head = f"exit code: {result.exit_code}" if result.exit_code is not None else "exit code: none"
    if result.timed_out:
        head += " (timed out)"
    if result.error:
        head += f"\nerror: {result.error}"
    return f"{head}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


def sandbox_summary(info: dict[str, Any]) -> dict[str, Any]:
    keys = ("sandbox_id", "status", "desktop", "created_at", "expires_at")
    return {k: info[k] for k in keys if k in info}


def build_server(url: str | None = None, api_key: str | None = None) -> MCPServer:
    server = MCPServer("corral", instructions=INSTRUCTIONS)
    tools = Tools(url, api_key)
    destructive = ToolAnnotations(destructiveHint=True)
    read_only = ToolAnnotations(readOnlyHint=True)

    # --- sandboxes ---------------------------------------------------------------------------

    @server.tool(description="Create a long-lived sandbox and return its id (use it in the other tools). "
                 "It lives `ttl` seconds unless deleted first; with desktop=true it has an X11 desktop "
                 "(1280x800 by default) for screenshot/click/type_text/press_key.")
    async def create_sandbox(
        ctx: Context,
        desktop: Annotated[bool, Field(description="Give it a desktop (Xvfb, window manager, xterm).")] = False,
        ttl: Annotated[float, Field(gt=0, description="Lifetime in seconds (default 3600).")] = 3600,
        network: Annotated[bool, Field(description="Allow outbound internet access (default: none).")] = False,
    ) -> str:
        async def work(client: AsyncClient) -> str:
            info = await client.json(calls.create_sandbox(desktop, ttl, network, None, None))
            return json.dumps(sandbox_summary(info))

        result: str = await tools.on_client(ctx, work)
        return result

    @server.tool(description="List your sandboxes (id, status, desktop, expiry) as JSON.", annotations=read_only)
    async def list_sandboxes(
        ctx: Context,
        include_ended: Annotated[bool, Field(description="Also list deleted and expired ones.")] = False,
    ) -> str:
        async def work(client: AsyncClient) -> str:
            data = await client.json(calls.list_sandboxes(include_ended))
            return json.dumps([sandbox_summary(s) for s in data.get("sandboxes", [])])

        result: str = await tools.on_client(ctx, work)
        return result

    @server.tool(description="Delete a sandbox: its processes, files and desktop are gone for good.",
                 annotations=destructive)
    async def delete_sandbox(ctx: Context, sandbox_id: SandboxId) -> str:
        async def work(client: AsyncClient) -> str:
            await client.send(calls.delete_sandbox(sandbox_id))
            return f"sandbox {sandbox_id} deleted"

        result: str = await tools.on_client(ctx, work)
        return result

    # --- commands ----------------------------------------------------------------------------

    async def run(ctx: Context, sandbox_id: str, tool: calls.Tool, source: str, timeout: float, cwd: str) -> str:
        async def work(sb: AsyncSandbox) -> str:
            if tool == "shell":
                result = await sb.run_shell(source, timeout=timeout, cwd=cwd or None)
            elif tool == "python":
                result = await sb.run_python(source, timeout=timeout, cwd=cwd or None)
            else:
                result = await sb.run_typescript(source, timeout=timeout, cwd=cwd or None)
            return command_text(result)

        text: str = await tools.on_sandbox(ctx, sandbox_id, work)
        return text

    @server.tool(description="Run a shell command (/bin/sh -c) in a sandbox and wait for it; returns the exit "
                 "code, stdout and stderr. Each call is a new shell (cd/export do not carry over; chain "
                 "with && or use files). For a long job, redirect to a file and run it with & ... ; nohup.")
    async def run_shell(
        ctx: Context, sandbox_id: SandboxId,
        command: Annotated[str, Field(description="The shell command line, e.g. 'pip list | head'.")],
        timeout: Timeout = 60, cwd: Cwd = "",
    ) -> str:
        return await run(ctx, sandbox_id, "shell", command, timeout, cwd)

    @server.tool(description="Run Python 3 source in a sandbox (a fresh interpreter each call); returns the exit "
                 "code, stdout and stderr (print what you want to see).")
    async def run_python(
        ctx: Context, sandbox_id: SandboxId,
        code: Annotated[str, Field(description="Python source, e.g. 'print(6 * 7)'.")],
        timeout: Timeout = 60, cwd: Cwd = "",
    ) -> str:
        return await run(ctx, sandbox_id, "python", code, timeout, cwd)

    @server.tool(description="Run TypeScript (or JavaScript) source in a sandbox with Node; returns the exit "
                 "code, stdout and stderr (console.log what you want to see).")
    async def run_typescript(
        ctx: Context, sandbox_id: SandboxId,
        code: Annotated[str, Field(description="TypeScript source, e.g. 'console.log(6 * 7)'.")],
        timeout: Timeout = 60, cwd: Cwd = "",
    ) -> str:
        return await run(ctx, sandbox_id, "typescript", code, timeout, cwd)

    # --- files -------------------------------------------------------------------------------

    @server.tool(description="Read a text file from a sandbox (invalid UTF-8 is replaced).", annotations=read_only)
    async def read_file(ctx: Context, sandbox_id: SandboxId, path: FilePath) -> str:
        async def work(sb: AsyncSandbox) -> str:
            return await sb.read_file(path)

        text: str = await tools.on_sandbox(ctx, sandbox_id, work)
        return text

    @server.tool(description="Write (create or replace) a text file in a sandbox; parent directories are made.")
    async def write_file(
        ctx: Context, sandbox_id: SandboxId, path: FilePath,
        content: Annotated[str, Field(description="The whole new content of the file (UTF-8 text).")],
    ) -> str:
        async def work(sb: AsyncSandbox) -> str:
            await sb.write_file(path, content)
            return f"wrote {len(content.encode())} bytes to {path}"

        text: str = await tools.on_sandbox(ctx, sandbox_id, work)
        return text

    @server.tool(description="List a directory of a sandbox as JSON entries (name, type file/directory/symlink, size in "
                 "bytes, mtime in Unix seconds).", annotations=read_only)
    async def list_files(
        ctx: Context, sandbox_id: SandboxId,
        path: Annotated[str, Field(description="The directory, relative to /workspace (default: /workspace).")] = ".",
    ) -> str:
        async def work(sb: AsyncSandbox) -> str:
            entries = await sb.files.list(path)
            return json.dumps([{"name": e.name, "type": e.type, "size": e.size, "mtime": e.mtime} for e in entries])

        text: str = await tools.on_sandbox(ctx, sandbox_id, work)
        return text

    # --- desktop -----------------------------------------------------------------------------

    @server.tool(description="A PNG screenshot of a desktop sandbox's screen. Click coordinates are in full "
                 "screen pixels: when the image is downscaled (max_width), multiply image coordinates "
                 "by the scale given with it.", annotations=read_only)
    async def screenshot(
        ctx: Context, sandbox_id: SandboxId,
        max_width: Annotated[int, Field(ge=0, le=10000, description="Downscale to at most this many pixels wide "
                                        "(0: the full screen size).")] = 0,
    ) -> Content:
        async def work(sb: AsyncSandbox) -> Content:
            shot = await sb.desktop("screenshot", max_width=max_width or None)
            png = base64.b64decode(shot.get("png_base64", ""))
            info = f"screenshot {shot.get('width')}x{shot.get('height')}, scale {shot.get('scale', 1)}"
            return [ImageContent(type="image", data=base64.b64encode(png).decode(), mime_type="image/png"),
                    TextContent(type="text", text=info)]

        content: Content = await tools.on_sandbox(ctx, sandbox_id, work)
        return content

    async def gui(ctx: Context, sandbox_id: str, action: str, done: str, **fields: Any) -> str:
        async def work(sb: AsyncSandbox) -> str:
            await sb.desktop(action, **fields)
            return done

        text: str = await tools.on_sandbox(ctx, sandbox_id, work)
        return text

    @server.tool(description="Click the mouse at (x, y) on a desktop sandbox's screen.")
    async def click(
        ctx: Context, sandbox_id: SandboxId, x: X, y: Y,
        button: Annotated[Literal["left", "middle", "right"], Field(description="Which button.")] = "left",
        count: Annotated[int, Field(ge=1, le=3, description="1 click, 2 double-click, 3 triple-click.")] = 1,
    ) -> str:
        return await gui(ctx, sandbox_id, "click", f"clicked {button} x{count} at ({x}, {y})",
                         x=x, y=y, button=button, count=count)

    @server.tool(description="Type text into the focused window of a desktop sandbox, as if on a keyboard "
                 "('\\n' presses Return). Click the target first to focus it.")
    async def type_text(
        ctx: Context, sandbox_id: SandboxId,
        text: Annotated[str, Field(min_length=1, description="The characters to type.")],
    ) -> str:
        return await gui(ctx, sandbox_id, "type", f"typed {len(text)} characters", text=text)

    @server.tool(description="Press a key or key combination on a desktop sandbox (X keysym names joined with "
                 "'+'; several separated by spaces): 'Return', 'ctrl+c', 'alt+Tab', 'Escape', 'ctrl+shift+t'.")
    async def press_key(
        ctx: Context, sandbox_id: SandboxId,
        keys: Annotated[str, Field(min_length=1, description="Key names, e.g. 'ctrl+s' or 'Down Down Return'.")],
    ) -> str:
        return await gui(ctx, sandbox_id, "key", f"pressed {keys}", keys=keys)

    @server.tool(description="Scroll the mouse wheel on a desktop sandbox, at (x, y) or where the pointer is.")
    async def scroll(
        ctx: Context, sandbox_id: SandboxId,
        direction: Annotated[Literal["up", "down", "left", "right"], Field(description="Which way.")] = "down",
        amount: Annotated[int, Field(ge=1, le=200, description="Wheel clicks (one is a few lines).")] = 3,
        x: Annotated[int | None, Field(description="Screen x to scroll at (with y); default: the pointer.")] = None,
        y: Annotated[int | None, Field(description="Screen y to scroll at (with x).")] = None,
    ) -> str:
        return await gui(ctx, sandbox_id, "scroll", f"scrolled {direction} {amount}",
                         direction=direction, amount=amount, x=x, y=y)

    @server.tool(description="Drag with the left mouse button held, from (x, y) to (to_x, to_y) on a desktop "
                 "sandbox (select text, move a window or a slider).")
    async def drag(
        ctx: Context, sandbox_id: SandboxId, x: X, y: Y,
        to_x: Annotated[int, Field(description="Screen x where the button is released.")],
        to_y: Annotated[int, Field(description="Screen y where the button is released.")],
    ) -> str:
        return await gui(ctx, sandbox_id, "drag", f"dragged ({x}, {y}) -> ({to_x}, {to_y})",
                         x=x, y=y, to_x=to_x, to_y=to_y)

    # --- one-shot tasks ----------------------------------------------------------------------

    @server.tool(description="Run a one-shot task: steps run in order in a fresh sandbox that is removed "
                 "afterwards; returns the task's status and each step's exit code and output. Each step "
                 "is an object like {\"tool\": \"shell\", \"command\": \"make test\"}, {\"tool\": \"python\", "
                 "\"code\": \"print(1)\"} or {\"tool\": \"typescript\", \"code\": \"console.log(1)\"}; a "
                 "failed step stops the task.")
    async def run_task(
        ctx: Context,
        steps: Annotated[list[dict[str, Any]], Field(min_length=1, description="The steps, in order.")],
        network: Annotated[bool, Field(description="Allow outbound internet access.")] = False,
        step_timeout: Annotated[float, Field(gt=0, le=86400, description="Seconds per step (default 300).")] = 300,
    ) -> str:
        try:
            result = await run_task_async(
                steps, url=tools.url, api_key=_bearer(ctx) or tools.api_key,
                network=network, step_timeout=step_timeout,
            )
        except errors.CorralError as exc:
            raise ToolError(f"{exc.code}: {exc.message}") from None
        return json.dumps(result.raw, default=str)

    return server


class RequireBearer:
    """Refuses HTTP requests without `Authorization: Bearer <key>` (the key itself is checked
    by the gateway on each tool call)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            if not header.lower().startswith("bearer ") or not header[7:].strip():
                response = JSONResponse(
                    {"error": {"code": "unauthenticated",
                               "message": "send your Corral API key: Authorization: Bearer crl_..."}},
                    status_code=401, headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def serve(url: str | None, http: bool, host: str, port: int, api_key: str | None = None) -> None:
    server = build_server(url, api_key)
    if not http:
        server.run("stdio")
        return
    import uvicorn

    app = RequireBearer(server.streamable_http_app(stateless_http=True, json_response=True, host=host))
    uvicorn.run(app, host=host, port=port, log_level="warning")


