"""Every out-of-range number and malformed body is a 400 (or 413) naming the field, never a 5xx:
values past what the protos carry (int32, int64, Duration), infinities, huge query parameters,
deeply nested JSON and over-long search words. One REST request per value, to a real gateway in
front of a real scheduler and memory service (no executor: nothing here gets to run)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from gateway_stack import MAX_REQUEST_BYTES

from corral.bounds import MAX_JSON_DEPTH, MAX_SEARCH_QUERY_CHARS

HUGE_NUMBERS = ["1e300", "Infinity", "-Infinity", "NaN", "1e20"]
LIMIT_FIELDS = ["memory_mb", "max_processes", "max_file_size_mb", "max_output_bytes", "disk_mb"]
# gui actions and their int fields (all int32 in gui.proto / task.proto).
GUI_INT_FIELDS = [
    ("move", "x"), ("move", "y"), ("click", "x"), ("click", "y"), ("double_click", "x"),
    ("triple_click", "y"), ("drag", "x"), ("drag", "y"), ("drag", "to_x"), ("drag", "to_y"),
    ("scroll", "x"), ("scroll", "y"), ("screenshot", "max_width"), ("screenshot", "max_height"),
    ("move", "max_width"), ("click", "max_height"),
]
SHELL = '{"tool": "shell", "command": "true"}'


def refused(response: httpx.Response, field: str, status: int = 400) -> dict[str, Any]:
    """The response is `status` with the JSON error body naming `field`, and no trace."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert field in error["message"], error
    assert "Traceback" not in response.text
    return error


def post_raw(api: httpx.Client, path: str, body: str, **headers: str) -> httpx.Response:
    return api.post(path, content=body.encode(), headers={"Content-Type": "application/json", **headers})


@pytest.mark.parametrize("value", HUGE_NUMBERS)
def test_a_huge_or_infinite_step_timeout_is_400_naming_it(api: httpx.Client, value: str) -> None:
    response = post_raw(api, "/v1/tasks", f'{{"steps": [{SHELL}], "step_timeout": {value}}}')
    refused(response, "step_timeout")


@pytest.mark.parametrize("value", HUGE_NUMBERS)
def test_a_huge_or_infinite_step_timeout_of_one_step_is_400_naming_it(api: httpx.Client, value: str) -> None:
    step = f'{{"tool": "python", "code": "pass", "timeout": {value}}}'
    response = post_raw(api, "/schedule", f'{{"steps": [{SHELL}, {step}]}}')
    refused(response, "steps[1].timeout")


def test_a_timeout_under_the_api_cap_but_over_the_deployments_is_400_too(api: httpx.Client) -> None:
    response = post_raw(api, "/v1/tasks", f'{{"steps": [{SHELL}], "step_timeout": 86400}}')
    refused(response, "step_timeout 86400s exceeds this deployment's maximum")


@pytest.mark.parametrize("field", LIMIT_FIELDS)
@pytest.mark.parametrize("value", [2**70, 2**63, -1])
def test_limits_past_the_protos_range_are_400_naming_the_field(api: httpx.Client, field: str, value: int) -> None:
    response = post_raw(api, "/v1/tasks", f'{{"steps": [{SHELL}], "limits": {{"{field}": {value}}}}}')
    refused(response, f"limits.{field}")


def test_max_processes_past_int32_is_400(api: httpx.Client) -> None:
    response = post_raw(api, "/v1/tasks", f'{{"steps": [{SHELL}], "limits": {{"max_processes": {2**31}}}}}')
    refused(response, "limits.max_processes")


@pytest.mark.parametrize(("field", "value"), [("max_processes", 1), ("max_processes", 7), ("memory_mb", 1)])
@pytest.mark.parametrize("path", ["/v1/tasks", "/v1/sandboxes"])
def test_limits_too_small_to_start_a_sandbox_are_400(api: httpx.Client, path: str, field: str, value: int) -> None:
    # Before: a sandbox with max_processes 1 was created, bwrap could not fork, and the client
    # got 503 "scheduler is not reachable: ... Creating new namespace failed".
    steps = f'"steps": [{SHELL}], ' if path == "/v1/tasks" else ""
    response = post_raw(api, path, f'{{{steps}"limits": {{"{field}": {value}}}}}')
    refused(response, f"limits.{field} {value} is below the least a sandbox runs with")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"steps": [{"tool": "shell", "command": "echo a\0b"}]}, "steps[0].shell.command contains a NUL"),
        ({"steps": [{"tool": "python", "code": "print(1)\0"}]}, "steps[0].python.code contains a NUL"),
        ({"steps": [{"tool": "read_file", "path": "a\0b"}]}, "steps[0].read_file.path contains a NUL"),
        ({"steps": [{"tool": "shell", "command": "true"}], "env": {"A": "x\0y"}}, "env.A contains a NUL"),
    ],
)
def test_nul_characters_where_no_program_takes_them_are_400(api: httpx.Client, body: object, field: str) -> None:
    # Before: 201, then the step failed when it ran ("could not run the step: embedded null byte").
    refused(api.post("/v1/tasks", json=body), field)


def test_a_nul_character_in_a_sandboxs_env_is_400(api: httpx.Client) -> None:
    # Before: 201, a sandbox whose every step would fail.
    refused(api.post("/v1/sandboxes", json={"env": {"A": "x\0y"}}), "env.A contains a NUL")


@pytest.mark.parametrize(("action", "field"), GUI_INT_FIELDS)
@pytest.mark.parametrize("value", [2**40, -(2**40)])
def test_gui_numbers_past_int32_are_400_naming_the_field(
    api: httpx.Client, action: str, field: str, value: int
) -> None:
    step = f'{{"tool": "gui", "action": "{action}", "{field}": {value}}}'
    response = post_raw(api, "/v1/tasks", f'{{"steps": [{SHELL}, {step}]}}')
    refused(response, f"steps[1].{field}")


@pytest.mark.parametrize("value", HUGE_NUMBERS)
def test_a_huge_or_infinite_sandbox_ttl_is_400_naming_it(api: httpx.Client, value: str) -> None:
    refused(post_raw(api, "/v1/sandboxes", f'{{"ttl": {value}}}'), "ttl")


@pytest.mark.parametrize("value", HUGE_NUMBERS)
def test_a_huge_or_infinite_extension_is_400_naming_it(api: httpx.Client, value: str) -> None:
    # The body is checked before the sandbox is looked up.
    refused(post_raw(api, "/v1/sandboxes/some-sandbox/extend", f'{{"ttl": {value}}}'), "ttl")


def task_id(api: httpx.Client) -> str:
    response = api.post("/v1/tasks", json={"steps": [{"tool": "shell", "command": "true"}]})
    assert response.status_code == 201
    created: str = response.json()["task_id"]
    return created


@pytest.mark.parametrize("after", [2**63, 2**70, -1, "x"])
def test_history_after_past_int64_is_400_naming_it(api: httpx.Client, after: object) -> None:
    refused(api.get(f"/v1/tasks/{task_id(api)}/history", params={"after": str(after)}), "after (query parameter)")


@pytest.mark.parametrize("after", [2**63, 2**70, -1])
def test_events_after_past_int64_is_400_not_a_broken_stream(api: httpx.Client, after: int) -> None:
    refused(api.get(f"/v1/tasks/{task_id(api)}/events", params={"after": str(after)}), "after (query parameter)")


@pytest.mark.parametrize("last_event_id", [str(2**70), "-3", "x", "١٢"])
def test_a_last_event_id_that_is_no_sequence_is_400(api: httpx.Client, last_event_id: str) -> None:
    response = api.get(
        f"/v1/tasks/{task_id(api)}/events", headers={"Last-Event-ID": last_event_id.encode()}
    )
    refused(response, "Last-Event-ID")


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 2000])
def test_deeply_nested_json_is_400(api: httpx.Client, depth: int) -> None:
    # 2000 levels is past the parser's recursion limit; MAX_JSON_DEPTH + 1 past the gateway's.
    body = '{"steps": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"
    assert len(body) < MAX_REQUEST_BYTES
    error = refused(post_raw(api, "/v1/tasks", body), f"deeper than {MAX_JSON_DEPTH} levels")
    assert error["code"] == "invalid_json"


def test_json_nested_100k_deep_is_413_when_it_is_that_large(api: httpx.Client) -> None:
    refused(post_raw(api, "/v1/tasks", "[" * 100_000 + "]" * 100_000), "larger than", status=413)


@pytest.mark.parametrize("length", [MAX_SEARCH_QUERY_CHARS + 1, 60_000])
def test_a_very_long_search_word_is_400_naming_q(api: httpx.Client, length: int) -> None:
    refused(api.get("/v1/search", params={"q": "a" * length}), "q (query parameter)")


def test_the_longest_search_word_is_answered(api: httpx.Client) -> None:
    response = api.get("/v1/search", params={"q": "a" * MAX_SEARCH_QUERY_CHARS})
    assert response.status_code == 200, response.text
    assert response.json()["hits"] == []
