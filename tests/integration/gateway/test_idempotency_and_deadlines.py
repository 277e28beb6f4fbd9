"""The gateway's Idempotency-Key header and its deadlines for requests slow to arrive.

Real gateway (uvicorn), scheduler and memory processes, no executor (tasks stay scheduled).
Before: a client that timed out and retried one submission created and ran 4 tasks; 2,000
half-sent requests were all held open for over 70 s. Now a retry answers the first task
(200, Idempotent-Replayed) and a half-sent request is cut off after its deadline (1 s here).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from gateway_stack import TEST_ENV, make_stack
from harness import Cluster, free_port
from sse_client import frames

from corral.config import Settings
from gateway.serving import protocol_for

HALF_SENT = 200  # connections per kind of half-sent request
READ_LIMIT = 30.0  # how long a test waits for the gateway to close a batch (seconds; a bound)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    env = {**TEST_ENV, "CORRAL_GATEWAY_HEADER_TIMEOUT_SECONDS": "1", "CORRAL_GATEWAY_BODY_TIMEOUT_SECONDS": "1"}
    yield from make_stack(tmp_path_factory.mktemp("gateway-idem"), "memory", "scheduler", env=env)


@pytest.fixture
def api(stack: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        yield client


def marked(marker: str) -> dict[str, Any]:
    return {"steps": [{"tool": "shell", "command": f"echo {marker}"}]}


def task_ids(api: httpx.Client) -> set[str]:
    """Every task (this module's stack has fewer than a page of them)."""
    return {t["task_id"] for t in api.get("/v1/tasks", params={"page_size": 500}).json()["tasks"]}


# --- Idempotency-Key ----------------------------------------------------------------------


def test_a_retry_with_the_key_answers_the_first_task(api: httpx.Client) -> None:
    marker, key = uuid.uuid4().hex, str(uuid.uuid4())
    before = task_ids(api)
    first = api.post("/v1/tasks", json=marked(marker), headers={"Idempotency-Key": key})
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    # The same request spelled differently (key order, spacing) is the same request.
    body = json.dumps({"steps": [{"command": f"echo {marker}", "tool": "shell"}]}, indent=3)
    retry = api.post(
        "/v1/tasks", content=body, headers={"Idempotency-Key": key, "Content-Type": "application/json"}
    )
    assert retry.status_code == 200, retry.text
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json()["task_id"] == first.json()["task_id"]
    assert retry.headers["Location"] == f"/v1/tasks/{first.json()['task_id']}"
    assert task_ids(api) - before == {first.json()["task_id"]}

    changed = api.post("/v1/tasks", json=marked(marker + "x"), headers={"Idempotency-Key": key})
    assert changed.status_code == 409, changed.text
    assert changed.json()["error"]["code"] == "already_exists"
    assert key in changed.json()["error"]["message"]
    assert task_ids(api) - before == {first.json()["task_id"]}


def test_schedule_takes_the_key_too(api: httpx.Client) -> None:
    marker, key = uuid.uuid4().hex, f"sched-{uuid.uuid4()}"
    before = task_ids(api)
    replies = [api.post("/schedule", json=marked(marker), headers={"Idempotency-Key": key}) for _ in range(3)]
    assert [r.status_code for r in replies] == [200, 200, 200]
    assert [r.headers.get("Idempotent-Replayed") for r in replies] == [None, "true", "true"]
    assert len({r.json()["task_id"] for r in replies}) == 1
    assert task_ids(api) - before == {replies[0].json()["task_id"]}


@pytest.mark.parametrize(
    ("key", "problem"), [("", "is empty"), ("k" * 300, "300 characters"), ("a b", "outside the allowed set")]
)
def test_a_bad_key_is_a_400_naming_the_header(api: httpx.Client, key: str, problem: str) -> None:
    before = task_ids(api)
    for path in ("/v1/tasks", "/schedule", "/v1/sandboxes"):
        body = {} if path == "/v1/sandboxes" else marked("bad-key")
        response = api.post(path, json=body, headers={"Idempotency-Key": key})
        assert response.status_code == 400, (path, response.text)
        message = response.json()["error"]["message"]
        assert "Idempotency-Key" in message and problem in message, message
    assert task_ids(api) == before


def test_concurrent_retries_over_http_create_one_task(stack: Cluster) -> None:
    marker, key = uuid.uuid4().hex, f"http-race-{uuid.uuid4()}"
    callers = 12
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        before = task_ids(client)

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
            return client.post("/v1/tasks", json=marked(marker), headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(callers) as pool:
        replies = list(pool.map(post, range(callers)))
    assert sorted(r.status_code for r in replies) == [200] * (callers - 1) + [201]
    assert len({r.json()["task_id"] for r in replies}) == 1
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        assert task_ids(client) - before == {replies[0].json()["task_id"]}


# --- deadlines for requests slow to arrive --------------------------------------------------


def _closed_by_server(sockets: list[socket.socket]) -> int:
    """How many of `sockets` the server closed (EOF or reset) within READ_LIMIT in all."""
    closed = 0
    deadline = time.monotonic() + READ_LIMIT
    for sock in sockets:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            while sock.recv(4096):
                pass  # a 4xx the server may send first
            closed += 1
        except ConnectionResetError:
            closed += 1
        except TimeoutError:
            pass
        finally:
            sock.close()
    return closed


def _open(stack: Cluster, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", int(stack.env["CORRAL_GATEWAY_PORT"])), timeout=10)
    sock.sendall(data)
    return sock


def test_half_sent_requests_are_cut_off(stack: Cluster, api: httpx.Client) -> None:
    before = task_ids(api)
    silent = [_open(stack, b"") for _ in range(HALF_SENT)]
    half_headers = [_open(stack, b"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty") for _ in range(HALF_SENT)]
    half_body = [
        _open(stack, b"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: 100\r\n\r\n{\"steps\": [")
        for _ in range(HALF_SENT)
    ]
    # Meanwhile the gateway serves others.
    assert api.get("/healthz").status_code in (200, 503)
    assert _closed_by_server(silent) == HALF_SENT
    assert _closed_by_server(half_headers) == HALF_SENT
    assert _closed_by_server(half_body) == HALF_SENT
    before = task_ids(api)
    created = api.post("/v1/tasks", json=marked(uuid.uuid4().hex))
    assert created.status_code == 201
    assert task_ids(api) - before == {created.json()["task_id"]}


def test_long_responses_and_idle_keep_alive_connections_are_not_cut_off(api: httpx.Client) -> None:
    task_id = api.post("/v1/tasks", json=marked(uuid.uuid4().hex)).json()["task_id"]
    keep_alives = 0
    # The stream outlives both 1 s deadlines: it is the response that takes long, not the request.
    with api.stream("GET", f"/v1/tasks/{task_id}/events") as response:
        assert response.status_code == 200
        for frame in frames(response):
            if frame.comment is not None:
                keep_alives += 1
                if keep_alives == 10:  # 0.3 s apart: 3 s of stream
                    break
    assert keep_alives == 10
    # The same (kept-alive) connection serves the next request.
    assert api.get(f"/v1/tasks/{task_id}").json()["status"] == "scheduled"


def test_a_websocket_outlives_the_deadlines(tmp_path: Path) -> None:
    """An upgraded connection (the desktop's VNC, Jupyter's kernels) belongs to the WebSocket
    protocol: no read deadline may cut it (h11 still counts the upgrade request's body as
    unread, which once armed the body deadline and closed every WebSocket after it)."""

    async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert scope["type"] == "websocket"
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message.get("text") or ""})

    settings = Settings(data_dir=tmp_path, gateway_header_timeout_seconds=0.3, gateway_body_timeout_seconds=0.3)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(echo, host="127.0.0.1", port=port, http=protocol_for(settings), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.05)

        async def talk() -> list[str]:
            async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
                answers = []
                for i in range(4):
                    await asyncio.sleep(0.4)  # past both deadlines, several times over
                    await ws.send(f"ping {i}")
                    answers.append(str(await ws.recv()))
                return answers

        assert asyncio.run(talk()) == [f"ping {i}" for i in range(4)]
    finally:
        server.should_exit = True
        thread.join(10)
