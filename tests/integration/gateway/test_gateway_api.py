"""The REST gateway against real scheduler and memory processes (no executor: tasks wait)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from gateway_stack import CURL_EXAMPLE, MAX_REQUEST_BYTES
from harness import Cluster
from sse_client import events, frames

from corral.v1 import memory_pb2, memory_pb2_grpc

ONE_STEP = {"steps": [{"tool": "shell", "command": "echo hi"}]}
JSON = {"Content-Type": "application/json"}


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) >= {"error"}, body
    assert set(body["error"]) >= {"code", "message"}, body
    error: dict[str, Any] = body["error"]
    return error


def create(api: httpx.Client, body: dict[str, Any] | None = None) -> str:
    response = api.post("/v1/tasks", json=body or ONE_STEP)
    assert response.status_code == 201, response.text
    task_id: str = response.json()["task_id"]
    return task_id


# --- the seed contract --------------------------------------------------------------------


def test_schedule_answers_exactly_a_task_id_and_status_describes_the_task(
    api: httpx.Client,
) -> None:
    response = api.post("/schedule", json=CURL_EXAMPLE)
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["task_id"] and body["task_id"]

    status = api.get("/status", params={"task_id": body["task_id"]})
    assert status.status_code == 200
    task = status.json()
    assert task["task_id"] == body["task_id"]
    assert task["status"] == "scheduled"
    assert [s["tool"] for s in task["steps"]] == ["shell", "python", "shell"]
    for step in task["steps"]:
        assert {
            "status",
            "exit_code",
            "stdout",
            "stderr",
            "duration_seconds",
            "stdout_truncated",
            "stderr_truncated",
        } <= set(step)
    assert "log_path" in task


def test_status_without_task_id_is_400_and_unknown_task_is_404(api: httpx.Client) -> None:
    missing = api.get("/status")
    assert missing.status_code == 400
    assert "task_id" in error_of(missing)["message"]
    unknown = api.get("/status", params={"task_id": "no-such-task"})
    assert unknown.status_code == 404
    assert error_of(unknown)["code"] == "not_found"
    assert "no-such-task" in error_of(unknown)["message"]


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"steps": [}', "invalid JSON at line 1 column 12"),
        ('{\n  "steps": [\n    {"tool": "shell", "command": "x"},\n  ]\n}', "line 4 column 3"),
        ("", "empty"),
        ("   ", "empty"),
        ("[1, 2]", "must be a JSON object"),
        ('"steps"', "must be a JSON object"),
    ],
)
def test_malformed_json_is_400_naming_the_problem(api: httpx.Client, raw: str, expected: str) -> None:
    for path in ("/schedule", "/v1/tasks"):
        response = api.post(path, content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, response.text
        assert expected in error_of(response)["message"]


def test_invalid_utf8_is_400(api: httpx.Client) -> None:
    response = api.post("/schedule", content=b'{"steps": "\xff"}', headers=JSON)
    assert response.status_code == 400
    assert "UTF-8" in error_of(response)["message"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"steps": [{"tool": "bash", "command": "ls"}]},
            "steps[0]: unknown tool 'bash' (expected one of shell, python, typescript, "
            "read_file, write_file, gui, list_files)",
        ),
        (
            {"steps": [{"tool": "shell", "command": "ls"}, {"tool": "shell"}]},
            "steps[1].command: field required",
        ),
        ({"steps": [{"command": "ls"}]}, "steps[0].tool: field required"),
        ({"steps": [{"tool": "python", "code": 42}]}, "steps[0].code: input should be a valid string"),
        ({"steps": [{"tool": "shell", "command": "ls", "timeout": "soon"}]}, "steps[0].timeout"),
        ({"steps": [{"tool": "shell", "command": "ls", "comand": "x"}]}, "steps[0].comand: unknown field"),
        ({"steps": []}, "steps: list should have at least 1 item"),
        ({}, "steps: field required"),
        ({"steps": "ls"}, "steps: input should be a valid list"),
        ({"steps": [5]}, "steps[0]"),
        ({"steps": [{"tool": "shell", "command": "ls"}], "limits": {"memory_mb": -1}}, "limits.memory_mb"),
        ({"steps": [{"tool": "shell", "command": "ls"}], "priority": 1}, "priority: unknown field"),
        # GUI steps are checked at submission: action, button, direction, key names.
        (
            {"steps": [{"tool": "gui", "action": "clik", "x": 1, "y": 2}]},
            "steps[0].action: unknown gui action 'clik' (expected one of screenshot, move, click,",
        ),
        ({"steps": [{"tool": "gui", "x": 1}]}, "steps[0].action: field required (one of screenshot,"),
        (
            {"steps": [{"tool": "gui", "action": "click", "button": "lefty"}]},
            "steps[0].button: input should be 'left', 'middle' or 'right'",
        ),
        (
            {"steps": [{"tool": "gui", "action": "scroll", "direction": "sideways"}]},
            "steps[0].direction: input should be 'up', 'down', 'left' or 'right'",
        ),
        (
            {"steps": [{"tool": "gui", "action": "key", "keys": "ctrl+notakey"}]},
            "steps[0].keys: unknown key 'notakey' in 'ctrl+notakey'",
        ),
        ({"steps": [{"tool": "gui", "action": "screenshot", "keys": "a"}]}, "steps[0].keys: unknown field"),
        ({"steps": [{"tool": "gui", "action": "wait_window"}]}, "steps[0].text: field required"),
    ],
)
def test_invalid_tasks_are_400_naming_the_field(
    api: httpx.Client, body: dict[str, Any], expected: str
) -> None:
    for path in ("/schedule", "/v1/tasks"):
        response = api.post(path, json=body)
        assert response.status_code == 400, response.text
        error = error_of(response)
        assert error["code"] == "invalid_argument"
        assert expected in error["message"], error["message"]


def test_invalid_argument_from_the_scheduler_is_400(api: httpx.Client) -> None:
    # The JSON schema allows any env name; the scheduler's own check refuses this one.
    body = {"steps": [{"tool": "shell", "command": "env"}], "env": {"A=B": "x"}}
    response = api.post("/v1/tasks", json=body)
    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == "invalid_argument"
    assert "A=B" in error_of(response)["message"]


def test_timeouts_above_the_deployments_maximum_are_400(api: httpx.Client) -> None:
    body = {"steps": [{"tool": "shell", "command": "true", "timeout": 99999}]}
    response = api.post("/v1/tasks", json=body)
    assert response.status_code == 400, response.text
    assert error_of(response)["message"] == "steps[0].timeout 99999s exceeds this deployment's maximum of 3600s"
    body = {"steps": [{"tool": "shell", "command": "true"}], "step_timeout": 10**5}
    assert "step_timeout 100000s exceeds" in error_of(api.post("/schedule", json=body))["message"]
    # Past the API's own cap (a week), the gateway refuses it before the scheduler sees it.
    body = {"steps": [{"tool": "shell", "command": "true"}], "step_timeout": 10**6}
    assert error_of(api.post("/schedule", json=body))["message"] == (
        "step_timeout: input should be less than or equal to 604800"
    )


def test_limits_above_the_deployments_maximum_are_400(api: httpx.Client) -> None:
    body = {"steps": [{"tool": "shell", "command": "true"}], "limits": {"memory_mb": 10**7}}
    response = api.post("/v1/tasks", json=body)
    assert response.status_code == 400, response.text
    assert error_of(response)["message"] == "limits.memory_mb 10000000 exceeds this deployment's maximum of 16384 MiB"
    body["limits"] = {"disk_mb": 10**9}
    assert "limits.disk_mb 1000000000 exceeds" in error_of(api.post("/schedule", json=body))["message"]


def test_body_over_the_limit_is_413(api: httpx.Client) -> None:
    padding = "x" * (MAX_REQUEST_BYTES + 1)
    body = {"steps": [{"tool": "shell", "command": f"echo {padding}"}]}
    response = api.post("/schedule", json=body)
    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"
    assert str(MAX_REQUEST_BYTES) in error_of(response)["message"]


def test_chunked_body_over_the_limit_is_413(api: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"steps": [{"tool": "shell", "command": "echo '
        for _ in range(MAX_REQUEST_BYTES // 512 + 2):
            yield b"x" * 512
        yield b'"}]}'

    response = api.post("/v1/tasks", content=chunks(), headers=JSON)
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"


def test_unknown_routes_and_methods_get_json_errors(api: httpx.Client) -> None:
    missing = api.get("/v2/nothing")
    assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"
    wrong = api.put("/schedule", json=ONE_STEP)
    assert wrong.status_code == 405 and error_of(wrong)["code"] == "method_not_allowed"


# --- /v1/tasks ----------------------------------------------------------------------------


def test_create_get_and_cancel_a_task(api: httpx.Client) -> None:
    created = api.post("/v1/tasks", json=CURL_EXAMPLE)
    assert created.status_code == 201
    task = created.json()
    task_id = task["task_id"]
    assert task["status"] == "scheduled"
    assert created.headers["location"] == f"/v1/tasks/{task_id}"

    got = api.get(f"/v1/tasks/{task_id}")
    assert got.status_code == 200 and got.json()["task_id"] == task_id

    cancelled = api.post(f"/v1/tasks/{task_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert {s["status"] for s in cancelled.json()["steps"]} == {"skipped"}

    again = api.delete(f"/v1/tasks/{task_id}")
    assert again.status_code == 409
    assert error_of(again)["code"] == "failed_precondition"

    other = create(api)
    deleted = api.delete(f"/v1/tasks/{other}")
    assert deleted.status_code == 200 and deleted.json()["status"] == "cancelled"


def test_unknown_task_is_404_everywhere(api: httpx.Client) -> None:
    for method, path in [
        ("GET", "/v1/tasks/nope"),
        ("POST", "/v1/tasks/nope/cancel"),
        ("DELETE", "/v1/tasks/nope"),
        ("GET", "/v1/tasks/nope/events"),
        ("GET", "/v1/tasks/nope/history"),
    ]:
        response = api.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert error_of(response)["code"] == "not_found"


def test_list_filters_by_state_and_pages(api: httpx.Client) -> None:
    ids = [create(api) for _ in range(3)]
    api.post(f"/v1/tasks/{ids[0]}/cancel")

    seen: list[str] = []
    token: str | None = None
    while True:
        params: dict[str, Any] = {"state": "scheduled", "page_size": 2}
        if token:
            params["page_token"] = token
        page = api.get("/v1/tasks", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["tasks"]) <= 2
        assert {t["status"] for t in body["tasks"]} <= {"scheduled"}
        seen += [t["task_id"] for t in body["tasks"]]
        token = body["next_page_token"]
        if not token:
            break
    assert set(ids[1:]) <= set(seen)
    assert ids[0] not in seen
    assert len(seen) == len(set(seen))

    cancelled = api.get("/v1/tasks", params={"state": "cancelled", "page_size": 500}).json()
    assert ids[0] in [t["task_id"] for t in cancelled["tasks"]]


def test_list_rejects_bad_parameters(api: httpx.Client) -> None:
    state = api.get("/v1/tasks", params={"state": "sleeping"})
    assert state.status_code == 400 and "sleeping" in error_of(state)["message"]
    size = api.get("/v1/tasks", params={"page_size": 0})
    assert size.status_code == 400 and "page_size" in error_of(size)["message"]
    token = api.get("/v1/tasks", params={"page_token": "garbage!"})
    assert token.status_code == 400 and "page_token" in error_of(token)["message"]


# --- events (SSE) -------------------------------------------------------------------------


def test_events_stream_live_until_the_task_finishes(stack: Cluster) -> None:
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as api:
        task_id = create(api)
        with api.stream("GET", f"/v1/tasks/{task_id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            stream = events(response)
            first = next(stream)
            assert first.event == "scheduled" and first.id == "1"
            assert first.json() == {**first.json(), "task_id": task_id, "type": "scheduled"}
            # The stream is open and idle; cancelling now must reach it live.
            with httpx.Client(base_url=stack.gateway_url, timeout=30) as other:
                assert other.post(f"/v1/tasks/{task_id}/cancel").status_code == 200
            rest = list(stream)
        assert [f.event for f in rest][-1] == "finished"
        final = rest[-1].json()
        assert final["status"] == "cancelled"
        ids = [int(f.id or 0) for f in [first, *rest]]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_idle_event_streams_send_keepalive_comments(stack: Cluster) -> None:
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as api:
        task_id = create(api)
        with api.stream("GET", f"/v1/tasks/{task_id}/events") as response:
            kinds = []
            for frame in frames(response):
                kinds.append(frame.comment if frame.comment is not None else frame.event)
                if frame.comment == "keep-alive":
                    break
        assert kinds[0] == "scheduled" and kinds[-1] == "keep-alive"
        api.post(f"/v1/tasks/{task_id}/cancel")


def test_events_resume_after_a_sequence_and_from_last_event_id(api: httpx.Client) -> None:
    task_id = create(api)
    api.post(f"/v1/tasks/{task_id}/cancel")
    with api.stream("GET", f"/v1/tasks/{task_id}/events") as response:
        everything = list(events(response))
    assert everything[0].event == "scheduled"
    assert everything[-1].event == "finished"
    last_but_one = int(everything[-2].id or 0)

    with api.stream("GET", f"/v1/tasks/{task_id}/events", params={"after": 1}) as response:
        assert [f.id for f in events(response)] == [f.id for f in everything[1:]]
    with api.stream(
        "GET", f"/v1/tasks/{task_id}/events", headers={"Last-Event-ID": str(last_but_one)}
    ) as response:
        assert [f.event for f in events(response)] == ["finished"]
    bad = api.get(f"/v1/tasks/{task_id}/events", headers={"Last-Event-ID": "abc"})
    assert bad.status_code == 400


def test_create_with_accept_event_stream_follows_the_task_in_the_same_request(stack: Cluster) -> None:
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as api:
        sse = {"Accept": "text/event-stream"}
        with api.stream("POST", "/v1/tasks", json=ONE_STEP, headers=sse) as response:
            assert response.status_code == 201
            assert response.headers["content-type"].startswith("text/event-stream")
            task_id = response.headers["location"].rpartition("/")[2]
            stream = events(response)
            first = next(stream)
            assert first.event == "scheduled" and first.json()["task_id"] == task_id
            with httpx.Client(base_url=stack.gateway_url, timeout=30) as other:
                assert other.post(f"/v1/tasks/{task_id}/cancel").status_code == 200
            rest = list(stream)
        assert rest[-1].event == "finished" and rest[-1].json()["status"] == "cancelled"
        # Asking for JSON too is the plain creation; a bad task is the usual 400, before any stream.
        both = api.post("/v1/tasks", json=ONE_STEP, headers={"Accept": "application/json, text/event-stream"})
        assert both.status_code == 201 and both.json()["task_id"]
        api.post(f"/v1/tasks/{both.json()['task_id']}/cancel")
        bad = api.post("/v1/tasks", json={"steps": []}, headers=sse)
        assert bad.status_code == 400 and error_of(bad)["code"] == "invalid_argument"


def test_events_of_a_quiet_task_from_its_last_event_start_and_go_on_live(stack: Cluster) -> None:
    """No event comes at once (the task waits, followed after its only event): the stream still
    starts (the task checked another way), then carries the next events."""
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as api:
        task_id = create(api)
        with api.stream("GET", f"/v1/tasks/{task_id}/events", params={"after": 1}) as response:
            assert response.status_code == 200
            stream = frames(response)
            assert next(stream).comment == "keep-alive"
            assert api.post(f"/v1/tasks/{task_id}/cancel").status_code == 200
            kinds = [f.event for f in stream if f.comment is None]
        assert kinds[-1] == "finished" and "scheduled" not in kinds
        assert api.get("/v1/tasks/nope/events", params={"after": 5}).status_code == 404


# --- history and search (memory) ----------------------------------------------------------


async def test_history_and_search_read_the_memory_service(stack: Cluster) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as api:
        created = await api.post("/v1/tasks", json=ONE_STEP)
        task_id = created.json()["task_id"]
        async with stack.aio_channel(stack.memory_address, "executor") as channel:  # as an executor records
            memory = memory_pb2_grpc.MemoryServiceStub(channel)
            await memory.AppendEvents(
                memory_pb2.AppendEventsRequest(
                    task_id=task_id,
                    events=[
                        memory_pb2.HistoryEvent(
                            kind=memory_pb2.HISTORY_KIND_ACTION,
                            step_index=0,
                            tool="shell",
                            action="echo zebra-crossing",
                        ),
                        memory_pb2.HistoryEvent(
                            kind=memory_pb2.HISTORY_KIND_RESULT,
                            step_index=0,
                            tool="shell",
                            state="completed",
                            exit_code=0,
                            stdout="zebra-crossing\n",
                        ),
                    ],
                )
            )
        history = (await api.get(f"/v1/tasks/{task_id}/history")).json()
        assert [e["sequence"] for e in history["events"]] == [1, 2]
        assert history["events"][0]["kind"] == "action"
        assert history["events"][0]["action"] == "echo zebra-crossing"
        assert history["events"][0]["exit_code"] is None
        assert history["events"][1]["exit_code"] == 0
        assert history["next_after"] == 2
        later = (await api.get(f"/v1/tasks/{task_id}/history", params={"after": 1})).json()
        assert [e["sequence"] for e in later["events"]] == [2]

        found = (await api.get("/v1/search", params={"q": "ZEBRA-crossing"})).json()
        assert [(h["task_id"], h["sequence"]) for h in found["hits"]] == [
            (task_id, 2),
            (task_id, 1),
        ]
        assert "zebra-crossing" in found["hits"][0]["snippet"]
        none = (await api.get("/v1/search", params={"q": "zebra", "task_id": "other"})).json()
        assert none["hits"] == []
        missing_q = await api.get("/v1/search")
        assert missing_q.status_code == 400
        assert "q" in error_of(missing_q)["message"]
        await api.post(f"/v1/tasks/{task_id}/cancel")


# --- health and docs ----------------------------------------------------------------------


def test_healthz_reports_both_services(api: httpx.Client) -> None:
    response = api.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "services": {"scheduler": "serving", "memory": "serving"},
    }


def test_openapi_documents_the_task_request(api: httpx.Client) -> None:
    docs = api.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = api.get("/openapi.json").json()
    for path in ("/schedule", "/status", "/v1/tasks", "/v1/tasks/{task_id}/events", "/healthz"):
        assert path in schema["paths"], path
    body = schema["paths"]["/schedule"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/TaskRequest"}
    components = schema["components"]["schemas"]
    assert {"TaskRequest", "ShellStep", "PythonStep", "WriteFileStep", "TaskView"} <= set(components)
    assert "steps" in components["TaskRequest"]["properties"]
