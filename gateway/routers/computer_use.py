"""Anthropic's client-side tools on a long-lived sandbox, taking the tool's input as the model
wrote it and answering with a tool_result block to send back as it is:

    POST /v1/sandboxes/{id}/computer-use/computer                     {"action": "left_click", "coordinate": [10, 20]}
    POST /v1/sandboxes/{id}/computer-use/bash                         {"command": "ls"} or {"restart": true}
    POST /v1/sandboxes/{id}/computer-use/str_replace_based_edit_tool  {"command": "view", "path": "/workspace/a.py"}
    GET  /v1/sandboxes/{id}/computer-use/computer                     the tool definition (display size), the screen's

Optional body fields beside the tool's own: `tool_use_id` (copied into the answer) and, for
computer, `display_width_px` / `display_height_px` (the display size the model was told, when
not the one GET gives). What the model got wrong is answered 200 with is_error true and the
reason as text (what the model needs to see); a sandbox that is unknown, has ended or has no
desktop is an HTTP error as elsewhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from gateway.body import parse_json, read_body
from gateway.computer_use import bash, computer, editor
from gateway.computer_use.ops import SandboxOps
from gateway.computer_use.results import ToolInputError, text, tool_result
from gateway.errors import ApiError
from gateway.routers.sandbox_calls import CALL_ERRORS, NOT_FOUND, CallerDep, SandboxStubsDep, SettingsDep
from gateway.views import errors

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/computer-use", tags=["computer use"])

# Refusals of the sandbox's services that are the model's input's fault: back to the model.
INPUT_STATUSES = (400, 413)
class TextBlock(BaseModel):
    type: Literal["text"]
    text: str


class ImageSource(BaseModel):
    type: Literal["base64"]
    media_type: Literal["image/png"]
    data: str = Field(description="The PNG, base64.")


class ImageBlock(BaseModel):
    type: Literal["image"]
    source: ImageSource


class ToolResult(BaseModel):
    """A tool_result content block of the Messages API."""

    type: Literal["tool_result"]
    tool_use_id: str | None = Field(None, description="The request's tool_use_id, when it gave one.")
    content: list[TextBlock | ImageBlock]
    is_error: bool


TOOL_RESULT: dict[int | str, dict[str, Any]] = {
    200: {
        "model": ToolResult,
        "description": "A tool_result block: content is text and/or a base64 PNG image; is_error when the "
        "input could not be carried out (the reason is the text).",
        "content": {"application/json": {"example": {
            "type": "tool_result", "tool_use_id": "toolu_01", "is_error": False,
            "content": [{"type": "text", "text": "X=512,Y=384"}],
        }}},
    },
}
DESKTOP_ERRORS = errors(*CALL_ERRORS, 413, e404=NOT_FOUND, e409="The sandbox has ended, or has no desktop.")


def body_schema(example: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "object", "additionalProperties": True}, "example": example,
    }}}}


async def _answer(
    request: Request, settings: Any, work: Callable[[dict[str, Any]], Awaitable[list[dict[str, Any]]]]
) -> JSONResponse:
    params = parse_json(await read_body(request, settings.max_request_bytes))
    if not isinstance(params, dict):
        raise ApiError(400, "invalid_argument", "the body must be a JSON object: the tool's input")
    tool_use_id = params.get("tool_use_id")
    tool_use_id = tool_use_id if isinstance(tool_use_id, str) else ""
    try:
        content = await work(params)
    except ToolInputError as exc:
        return JSONResponse(tool_result([text(str(exc))], is_error=True, tool_use_id=tool_use_id))
    except ApiError as exc:
        if exc.status not in INPUT_STATUSES:
            raise
        return JSONResponse(tool_result([text(exc.message)], is_error=True, tool_use_id=tool_use_id))
    return JSONResponse(tool_result(content, tool_use_id=tool_use_id))


def _declared(params: dict[str, Any]) -> tuple[int, int] | None:
    width, height = params.get("display_width_px"), params.get("display_height_px")
    if width is None and height is None:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 10_000 for v in (width, height)):
        raise ApiError(400, "invalid_argument", "display_width_px and display_height_px must both be integers in 1..10000")
    return int(width), int(height)  # type: ignore[arg-type]


@router.get(
    "/computer",
    name="computer_use_definition",
    summary="The computer tool's definition for this desktop (its scaled display size), and the real screen size",
    responses={200: {"content": {"application/json": {"schema": {
        "type": "object", "required": ["tool", "screen"], "properties": {
            "tool": {"type": "object", "description": "As the Messages API takes it in `tools`."},
            "screen": {"type": "object", "required": ["width", "height"], "properties": {
                "width": {"type": "integer"}, "height": {"type": "integer"}}},
        },
    }, "example": {
        "tool": {"type": "computer_20251124", "name": "computer", "display_width_px": 1280,
                 "display_height_px": 800, "enable_zoom": True},
        "screen": {"width": 1280, "height": 800},
    }}}}, **DESKTOP_ERRORS},
)
async def computer_definition(sandbox_id: str, stubs: SandboxStubsDep, caller: CallerDep) -> JSONResponse:
    display = await computer.display_of(SandboxOps(stubs, caller, sandbox_id), None)
    return JSONResponse({
        # As the Messages API takes it in `tools`.
        "tool": {
            "type": "computer_20251124", "name": "computer",
            "display_width_px": display.model_width, "display_height_px": display.model_height, "enable_zoom": True,
        },
        "screen": {"width": display.width, "height": display.height},
    })


@router.post(
    "/computer",
    name="computer_use_computer",
    summary="Anthropic's computer tool: one action on the desktop (coordinates in the scaled display)",
    responses={**TOOL_RESULT, **DESKTOP_ERRORS},
    openapi_extra=body_schema({"action": "left_click", "coordinate": [100, 200], "tool_use_id": "toolu_01"}),
)
async def computer_action(
    sandbox_id: str, request: Request, stubs: SandboxStubsDep, settings: SettingsDep, caller: CallerDep
) -> JSONResponse:
    ops = SandboxOps(stubs, caller, sandbox_id)

    async def work(params: dict[str, Any]) -> list[dict[str, Any]]:
        return await computer.run(ops, params, await computer.display_of(ops, _declared(params)))

    return await _answer(request, settings, work)


@router.post(
    "/bash",
    name="computer_use_bash",
    summary="Anthropic's bash tool: a command in the sandbox's persistent shell, or restart",
    responses={**TOOL_RESULT, **errors(*CALL_ERRORS, 413, e404=NOT_FOUND)},
    openapi_extra=body_schema({"command": "cd /tmp && ls", "tool_use_id": "toolu_02"}),
)
async def bash_command(
    sandbox_id: str, request: Request, stubs: SandboxStubsDep, settings: SettingsDep, caller: CallerDep
) -> JSONResponse:
    ops = SandboxOps(stubs, caller, sandbox_id)
    return await _answer(request, settings, lambda params: bash.run(ops, params))


@router.post(
    "/str_replace_based_edit_tool",
    name="computer_use_text_editor",
    summary="Anthropic's text editor tool: view, create, str_replace, insert, undo_edit",
    responses={**TOOL_RESULT, **errors(*CALL_ERRORS, 413, e404=NOT_FOUND)},
    openapi_extra=body_schema({"command": "view", "path": "/workspace/app.py", "view_range": [1, 20]}),
)
async def text_editor(
    sandbox_id: str, request: Request, stubs: SandboxStubsDep, settings: SettingsDep, caller: CallerDep
) -> JSONResponse:
    ops = SandboxOps(stubs, caller, sandbox_id)
    return await _answer(request, settings, lambda params: editor.run(ops, params))
