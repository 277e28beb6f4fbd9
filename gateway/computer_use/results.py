"""Tool results in the shape the Messages API takes back: a tool_result block's content."""

from __future__ import annotations

import base64
from typing import Any


class ToolInputError(Exception):
    """The model's input cannot be carried out; the message goes back to it as is_error."""


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def image(png: bytes) -> dict[str, Any]:
    data = base64.b64encode(png).decode("ascii")
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}


def tool_result(content: list[dict[str, Any]], is_error: bool = False, tool_use_id: str = "") -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "content": content, "is_error": is_error}
    if tool_use_id:
        block["tool_use_id"] = tool_use_id
    return block
