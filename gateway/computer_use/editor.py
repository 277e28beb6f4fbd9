"""Anthropic's `str_replace_based_edit_tool` (text_editor_20250728 and earlier): view, create,
str_replace, insert, undo_edit on a sandbox's files, with the wording of Anthropic's reference
implementation, so a model reads the answers it was trained on.

Edit history (for undo_edit) is kept by the gateway per sandbox, caller and file, bounded.
"""

from __future__ import annotations

import posixpath
import shlex
from collections import OrderedDict
from typing import Any

from gateway.computer_use.ops import SandboxOps
from gateway.computer_use.results import ToolInputError, text

COMMANDS = ("view", "create", "str_replace", "insert", "undo_edit")
SNIPPET_LINES = 4
MAX_FILE_BYTES = 16 * 1024 * 1024
# What view returns at most (as the reference's truncation), in characters.
MAX_VIEW_CHARS = 16_000
CLIPPED = (
    "<response clipped><NOTE>To save on context only part of this file has been shown to you. "
    "Use view with view_range to see the rest.</NOTE>"
)
MAX_VERSIONS_PER_FILE = 20
MAX_FILES = 1000

_history: OrderedDict[tuple[Any, str], list[str]] = OrderedDict()


def _remember(ops: SandboxOps, path: str, content: str) -> None:
    key = (ops.owner, path)
    versions = _history.setdefault(key, [])
    _history.move_to_end(key)
    versions.append(content)
    del versions[:-MAX_VERSIONS_PER_FILE]
    while len(_history) > MAX_FILES:
        _history.popitem(last=False)


def numbered(content: str, descriptor: str, first: int = 1) -> str:
    """`cat -n` of `content`, as the reference prints it."""
    if len(content) > MAX_VIEW_CHARS:
        content = content[:MAX_VIEW_CHARS] + CLIPPED
    content = content.expandtabs()
    lines = "\n".join(f"{number:6}\t{line}" for number, line in enumerate(content.split("\n"), first))
    return f"Here's the result of running `cat -n` on {descriptor}:\n{lines}\n"


async def _read(ops: SandboxOps, path: str) -> str:
    data, size = await ops.read(path, MAX_FILE_BYTES)
    if size > len(data):
        raise ToolInputError(f"{path} is {size} bytes: the text editor reads files of at most {MAX_FILE_BYTES}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ToolInputError(f"{path} is not a UTF-8 text file") from None


async def _write(ops: SandboxOps, path: str, content: str) -> None:
    await ops.write(path, content.encode("utf-8"))


def _string(params: dict[str, Any], name: str, command: str, required: bool = True) -> str | None:
    value = params.get(name)
    if value is None:
        if required:
            raise ToolInputError(f"Parameter `{name}` is required for command: {command}")
        return None
    if not isinstance(value, str):
        raise ToolInputError(f"Parameter `{name}` must be a string, got {type(value).__name__}")
    return value


async def run(ops: SandboxOps, params: dict[str, Any]) -> list[dict[str, Any]]:
    command = params.get("command")
    path = params.get("path")
    if command not in COMMANDS:
        raise ToolInputError(
            f"Unrecognized command {command}. The allowed commands for the str_replace_based_edit_tool "
            f"tool are: {', '.join(COMMANDS)}"
        )
    if not isinstance(path, str) or not path:
        raise ToolInputError(f"Parameter `path` is required for command: {command}")
    if not path.startswith("/"):
        raise ToolInputError(
            f"The path {path} is not an absolute path, it should start with `/`. "
            f"Maybe you meant {posixpath.join('/workspace', path)}?"
        )
    path = posixpath.normpath(path)
    kind = await ops.kind(path)
    if not kind and command != "create":
        raise ToolInputError(f"The path {path} does not exist. Please provide a valid path.")
    if kind and command == "create":
        raise ToolInputError(f"File already exists at: {path}. Cannot overwrite files using command `create`.")
    if kind == "directory" and command != "view":
        raise ToolInputError(f"The path {path} is a directory and only the `view` command can be used on directories")
    if command == "view":
        return [text(await _view(ops, path, kind == "directory", params.get("view_range")))]
    if command == "create":
        file_text = _string(params, "file_text", command)
        assert file_text is not None
        await _write(ops, path, file_text)
        _remember(ops, path, file_text)
        return [text(f"File created successfully at: {path}")]
    if command == "str_replace":
        return [text(await _str_replace(ops, path, params))]
    if command == "insert":
        return [text(await _insert(ops, path, params))]
    versions = _history.get((ops.owner, path))
    if not versions:
        raise ToolInputError(f"No edit history found for {path}.")
    previous = versions.pop()
    await _write(ops, path, previous)
    return [text(f"Last edit to {path} undone successfully. {numbered(previous, path)}")]


async def _view(ops: SandboxOps, path: str, is_dir: bool, view_range: Any) -> str:
    if is_dir:
        if view_range:
            raise ToolInputError("The `view_range` parameter is not allowed when `path` points to a directory.")
        result = await ops.shell(f"find {shlex.quote(path)} -maxdepth 2 -not -path '*/.*' | sort")
        if result.exit_code != 0:
            raise ToolInputError(result.stderr.strip() or result.error)
        return (
            f"Here's the files and directories up to 2 levels deep in {path}, excluding hidden items:\n"
            f"{result.stdout}\n"
        )
    content = await _read(ops, path)
    first = 1
    if view_range:
        if (
            not isinstance(view_range, list) or len(view_range) != 2
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in view_range)
        ):
            raise ToolInputError("Invalid `view_range`. It should be a list of two integers.")
        lines = content.split("\n")
        count = len(lines)
        first, last = view_range
        if first < 1 or first > count:
            raise ToolInputError(
                f"Invalid `view_range`: {view_range}. Its first element `{first}` should be within the "
                f"range of lines of the file: {[1, count]}"
            )
        if last > count:
            raise ToolInputError(
                f"Invalid `view_range`: {view_range}. Its second element `{last}` should be smaller than "
                f"the number of lines in the file: `{count}`"
            )
        if last != -1 and last < first:
            raise ToolInputError(
                f"Invalid `view_range`: {view_range}. Its second element `{last}` should be larger or "
                f"equal than its first `{first}`"
            )
        content = "\n".join(lines[first - 1 :] if last == -1 else lines[first - 1 : last])
    return numbered(content, path, first)


async def _str_replace(ops: SandboxOps, path: str, params: dict[str, Any]) -> str:
    old = _string(params, "old_str", "str_replace")
    assert old is not None
    new = (_string(params, "new_str", "str_replace", required=False) or "").expandtabs()
    content = (await _read(ops, path)).expandtabs()
    old = old.expandtabs()
    occurrences = content.count(old) if old else 0
    if occurrences == 0:
        raise ToolInputError(f"No replacement was performed, old_str `{old}` did not appear verbatim in {path}.")
    if occurrences > 1:
        lines = [number for number, line in enumerate(content.split("\n"), 1) if old in line]
        raise ToolInputError(
            f"No replacement was performed. Multiple occurrences of old_str `{old}` in lines {lines}. "
            "Please ensure it is unique"
        )
    edited = content.replace(old, new)
    await _write(ops, path, edited)
    _remember(ops, path, content)
    at = content.split(old)[0].count("\n")
    start = max(0, at - SNIPPET_LINES)
    end = at + SNIPPET_LINES + new.count("\n")
    snippet = "\n".join(edited.split("\n")[start : end + 1])
    return (
        f"The file {path} has been edited. {numbered(snippet, f'a snippet of {path}', start + 1)}"
        "Review the changes and make sure they are as expected. Edit the file again if necessary."
    )


async def _insert(ops: SandboxOps, path: str, params: dict[str, Any]) -> str:
    line = params.get("insert_line")
    if line is None:
        raise ToolInputError("Parameter `insert_line` is required for command: insert")
    new = _string(params, "new_str", "insert")
    assert new is not None
    content = (await _read(ops, path)).expandtabs()
    new = new.expandtabs()
    lines = content.split("\n")
    if not isinstance(line, int) or isinstance(line, bool) or not 0 <= line <= len(lines):
        raise ToolInputError(
            f"Invalid `insert_line` parameter: {line}. It should be within the range of lines of the file: "
            f"{[0, len(lines)]}"
        )
    added = new.split("\n")
    edited = "\n".join(lines[:line] + added + lines[line:])
    snippet = "\n".join(lines[max(0, line - SNIPPET_LINES) : line] + added + lines[line : line + SNIPPET_LINES])
    await _write(ops, path, edited)
    _remember(ops, path, content)
    return (
        f"The file {path} has been edited. "
        f"{numbered(snippet, 'a snippet of the edited file', max(1, line - SNIPPET_LINES + 1))}"
        "Review the changes and make sure they are as expected (correct indentation, no duplicate lines, "
        "etc). Edit the file again if necessary."
    )
