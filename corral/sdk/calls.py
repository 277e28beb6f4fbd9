"""Every REST call the SDK makes, built once for both clients (sync.py and aio.py).

The paths are the gateway's (README, "REST API"); a long-lived sandbox's interactive calls
(commands, files, desktop) go to /v1/sandboxes/{id}/..., one-shot tasks to /v1/tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import quote

from corral.sdk._http import NETWORK_SLACK_SECONDS, Call

Tool = Literal["shell", "python", "typescript"]
NetworkArg = bool | Mapping[str, Sequence[str]]

SSE = {"Accept": "text/event-stream"}
# How long a task's event stream is read (the gateway's keep-alives come far more often).
FOLLOW_SECONDS = 24 * 3600.0


def _sandbox(sandbox_id: str, rest: str = "") -> str:
    return f"/v1/sandboxes/{quote(sandbox_id, safe='')}{rest}"


def create_sandbox(
    desktop: bool,
    ttl: float | None,
    network: NetworkArg,
    env: Mapping[str, str] | None,
    limits: Mapping[str, int] | None,
) -> Call:
    body: dict[str, Any] = {"desktop": desktop, "network": network if isinstance(network, bool) else dict(network)}
    if ttl is not None:
        body["ttl"] = ttl
    if env:
        body["env"] = dict(env)
    if limits:
        body["limits"] = dict(limits)
    return Call("POST", "/v1/sandboxes", json=body)


def get_sandbox(sandbox_id: str) -> Call:
    return Call("GET", _sandbox(sandbox_id))


def delete_sandbox(sandbox_id: str) -> Call:
    return Call("DELETE", _sandbox(sandbox_id))


def extend_sandbox(sandbox_id: str, ttl: float | None) -> Call:
    return Call("POST", _sandbox(sandbox_id, "/extend"), json={"ttl": ttl} if ttl is not None else {})


def set_network(sandbox_id: str, allow: Sequence[str], deny: Sequence[str]) -> Call:
    return Call("PUT", _sandbox(sandbox_id, "/network"), json={"allow": list(allow), "deny": list(deny)})


def command_body(
    tool: Tool,
    source: str,
    timeout: float | None,
    cwd: str | None,
    env: Mapping[str, str] | None,
    background: bool = False,
    stdin: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {"tool": tool, ("command" if tool == "shell" else "code"): source}
    if timeout is not None:
        body["timeout"] = timeout
    if cwd:
        body["cwd"] = cwd
    if env:
        body["env"] = dict(env)
    if background:
        body["background"] = True
        if stdin:
            body["stdin"] = True  # kept open for CommandHandle.send_stdin
    return body


def run_command(sandbox_id: str, body: dict[str, Any], stream: bool = False) -> Call:
    timeout = float(body.get("timeout") or 60) + NETWORK_SLACK_SECONDS
    return Call(
        "POST", _sandbox(sandbox_id, "/commands"), json=body, headers=SSE if stream else {}, timeout=timeout
    )


def command(sandbox_id: str, command_id: str, rest: str = "") -> str:
    return _sandbox(sandbox_id, f"/commands/{quote(command_id, safe='')}{rest}")


def command_status(sandbox_id: str, command_id: str) -> Call:
    """State and exit (no output): GET .../commands/{id}."""
    return Call("GET", command(sandbox_id, command_id))


def command_output(sandbox_id: str, command_id: str) -> Call:
    """Its output from its start, live until it ends (SSE)."""
    return Call("GET", command(sandbox_id, command_id, "/output"), headers=SSE, timeout=24 * 3600.0)


def command_stdin(sandbox_id: str, command_id: str, data: bytes, close: bool = False) -> Call:
    return Call("POST", command(sandbox_id, command_id, "/stdin"), content=data,
                params={"close": "true" if close else None},
                headers={"Content-Type": "application/octet-stream"})


def command_signal(sandbox_id: str, command_id: str, signal: str) -> Call:
    return Call("POST", command(sandbox_id, command_id, "/signal"), json={"signal": signal})


def command_kill(sandbox_id: str, command_id: str) -> Call:
    return Call("DELETE", command(sandbox_id, command_id))


def read_file(sandbox_id: str, path: str) -> Call:
    return Call("GET", _sandbox(sandbox_id, "/files"), params={"path": path})


def write_file(sandbox_id: str, path: str, content: bytes) -> Call:
    return Call("PUT", _sandbox(sandbox_id, "/files"), params={"path": path}, content=content,
                headers={"Content-Type": "application/octet-stream"})


def list_files(sandbox_id: str, path: str) -> Call:
    return Call("GET", _sandbox(sandbox_id, "/files/list"), params={"path": path})


def stat_file(sandbox_id: str, path: str) -> Call:
    return Call("GET", _sandbox(sandbox_id, "/files/stat"), params={"path": path})


def make_dir(sandbox_id: str, path: str) -> Call:
    return Call("POST", _sandbox(sandbox_id, "/files/mkdir"), json={"path": path})


def remove(sandbox_id: str, path: str) -> Call:
    return Call("DELETE", _sandbox(sandbox_id, "/files"), params={"path": path})


def rename(sandbox_id: str, source: str, target: str) -> Call:
    return Call("POST", _sandbox(sandbox_id, "/files/rename"), json={"from": source, "to": target})


def upload(sandbox_id: str, directory: str, tar: bytes) -> Call:
    return Call("POST", _sandbox(sandbox_id, "/files/upload"), params={"path": directory}, content=tar,
                headers={"Content-Type": "application/x-tar"})


def download(sandbox_id: str, directory: str) -> Call:
    return Call("GET", _sandbox(sandbox_id, "/files/download"), params={"path": directory})


def desktop_action(sandbox_id: str, action: str, **fields: Any) -> Call:
    body = {"action": action, **{k: v for k, v in fields.items() if v is not None}}
    return Call("POST", _sandbox(sandbox_id, "/desktop/actions"), json=body)


def screenshot(sandbox_id: str, max_width: int = 0, max_height: int = 0) -> Call:
    return Call("GET", _sandbox(sandbox_id, "/desktop/screenshot"),
                params={"max_width": max_width or None, "max_height": max_height or None})


def create_code_context(sandbox_id: str, language: str, cwd: str | None) -> Call:
    body: dict[str, Any] = {"language": language}
    if cwd:
        body["cwd"] = cwd
    # A kernel's start (first one: matplotlib's font cache too) is slower than a plain call.
    return Call("POST", _sandbox(sandbox_id, "/contexts"), json=body, timeout=120 + NETWORK_SLACK_SECONDS)


def run_code(sandbox_id: str, context_id: str, code: str, timeout: float | None) -> Call:
    body: dict[str, Any] = {"code": code}
    if timeout is not None:
        body["timeout"] = timeout
    # The gateway's grace past the run's timeout (the kernel interrupted, then reported), and ours.
    wait = float(timeout or 60) + 30 + NETWORK_SLACK_SECONDS
    return Call("POST", _sandbox(sandbox_id, f"/contexts/{quote(context_id, safe='')}/run"), json=body, timeout=wait)


def delete_code_context(sandbox_id: str, context_id: str) -> Call:
    return Call("DELETE", _sandbox(sandbox_id, f"/contexts/{quote(context_id, safe='')}"))


def submit_task(spec: Mapping[str, Any]) -> Call:
    return Call("POST", "/v1/tasks", json=dict(spec))


def submit_and_follow_task(spec: Mapping[str, Any]) -> Call:
    """Submits the task and streams its events in the same request (Location names the task)."""
    return Call("POST", "/v1/tasks", json=dict(spec), headers=SSE)


def get_task(task_id: str) -> Call:
    return Call("GET", f"/v1/tasks/{quote(task_id, safe='')}")


def task_events(task_id: str, after: int = 0) -> Call:
    """The task's events after sequence `after` (replayed, then live, to its `finished`)."""
    return Call("GET", f"/v1/tasks/{quote(task_id, safe='')}/events", params={"after": after or None},
                headers=SSE, timeout=FOLLOW_SECONDS)


def list_tasks(state: str | None, page_size: int, page_token: str = "") -> Call:
    return Call("GET", "/v1/tasks", params={"state": state, "page_size": page_size, "page_token": page_token or None})


def cancel_task(task_id: str) -> Call:
    return Call("POST", f"/v1/tasks/{quote(task_id, safe='')}/cancel")


def list_sandboxes(include_ended: bool = False) -> Call:
    return Call("GET", "/v1/sandboxes", params={"include_ended": "true" if include_ended else None})


def create_key(name: str, tenant_id: str, admin: bool) -> Call:
    return Call("POST", "/v1/keys", json={"name": name, "tenant_id": tenant_id, "admin": admin})


def list_keys(include_revoked: bool) -> Call:
    return Call("GET", "/v1/keys", params={"include_revoked": "true" if include_revoked else None})


def revoke_key(key_id: str) -> Call:
    return Call("DELETE", f"/v1/keys/{quote(key_id, safe='')}")


# Anthropic's client-side tools, by the names the model calls them.
ComputerUseTool = Literal["computer", "bash", "str_replace_based_edit_tool"]
# The longest a computer-use call may take: bash's 120 s, a 100 s wait or hold_key, and slack.
COMPUTER_USE_TIMEOUT = 180.0


def computer_use(sandbox_id: str, tool: str, tool_input: Mapping[str, Any], tool_use_id: str = "") -> Call:
    body = {**tool_input, **({"tool_use_id": tool_use_id} if tool_use_id else {})}
    return Call("POST", _sandbox(sandbox_id, f"/computer-use/{quote(tool, safe='')}"), json=body,
                timeout=COMPUTER_USE_TIMEOUT)


def computer_definition(sandbox_id: str) -> Call:
    return Call("GET", _sandbox(sandbox_id, "/computer-use/computer"))
