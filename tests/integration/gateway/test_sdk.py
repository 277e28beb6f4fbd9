"""The SDK (corral/sdk/) against a real embedded Corral through its REST gateway: sandbox
lifetime, one-shot tasks, tasks in a sandbox, and the typed errors of each failure."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from harness import Cluster

from corral import AsyncSandbox, CommandFailed, Sandbox, Timeout, errors, run_task, run_task_async
from corral.sdk.sync import Client, Task


def test_a_sandbox_lives_from_create_to_the_end_of_its_block(full_stack: Cluster) -> None:
    with Sandbox.create(ttl=600, url=full_stack.gateway_url) as sb:
        assert sb.id and sb.token and sb.view_token
        again = Sandbox.connect(sb.id, url=full_stack.gateway_url)
        assert again.info["status"] == "active" and not again.token  # tokens are shown once
        sb.extend(1200)
        done = sb.run_task([
            {"tool": "write_file", "path": "app.py", "content": "print(6 * 7)"},
            {"tool": "python", "code": "exec(open('app.py').read())"},
        ])
        assert done.ok and done.steps[1].stdout == "42\n"
        later = sb.run_task([{"tool": "shell", "command": "cat app.py; pwd"}])
        assert later.steps[0].stdout == "print(6 * 7)/workspace\n"  # the workspace persists
        sandbox_id = sb.id
    assert again.refresh()["status"] == "deleted"
    with pytest.raises(errors.NotFound):
        Sandbox.connect("no-such-sandbox", url=full_stack.gateway_url)
    with pytest.raises(errors.FailedPrecondition, match="deleted"):
        again.run_task([{"tool": "shell", "command": "true"}])
    again.client.close()
    assert sandbox_id


def test_one_shot_tasks_sync_and_async(full_stack: Cluster) -> None:
    seen: list[str] = []
    result = run_task(
        [{"tool": "shell", "command": "echo hi"}, {"tool": "shell", "command": "exit 3"}],
        url=full_stack.gateway_url,
        on_event=lambda event, data: seen.append(event),
    )
    assert result.status == "failed" and not result.ok
    assert result.steps[0].stdout == "hi\n" and result.steps[1].exit_code == 3
    assert seen[-1] == "finished" and "step_finished" in seen

    async def go() -> str:
        async with await AsyncSandbox.create(url=full_stack.gateway_url) as sb:
            task = await sb.run_task([{"tool": "shell", "command": "echo $HOME"}])
            assert task.steps[0].stdout == "/workspace\n"
        one = await run_task_async([{"tool": "shell", "command": "echo async"}], url=full_stack.gateway_url)
        return one.steps[0].stdout

    assert asyncio.run(go()) == "async\n"


def _requests(gateway_url: str, route: str) -> float:
    """How many requests to `route` (a template) the gateway has answered, from its /metrics."""
    text = httpx.get(gateway_url + "/metrics", timeout=30).text
    pattern = rf'corral_gateway_requests_total\{{method="\w+",route="{re.escape(route)}",status="\d+"\}} (\S+)'
    return sum(float(value) for value in re.findall(pattern, text))


def test_a_task_is_submitted_and_followed_in_one_request_on_one_connection(full_stack: Cluster) -> None:
    url = full_stack.gateway_url
    before = _requests(url, "/v1/tasks/{task_id}/events"), _requests(url, "/v1/tasks")
    with Client(url) as client:
        sockets = set()
        for _ in range(2):
            with Task.submit({"steps": [{"tool": "shell", "command": "echo x"}]}, client=client) as task:
                kinds = [kind for kind, _ in task.events()]
            assert kinds[0] == "scheduled" and kinds[-1] == "finished" and "output" in kinds
            # Read to its end, the stream's connection is the next request's.
            sockets |= {conn.sock.getsockname() for conn in client.wire._idle if conn.sock is not None}
        assert len(sockets) == 1
        assert task.status().ok
        # Left unread, the events are let go of with the task.
        with Task.submit({"steps": [{"tool": "shell", "command": "true"}]}, client=client) as unread:
            pass
        assert unread.wait().ok  # followed again, by GET .../events
    after = _requests(url, "/v1/tasks/{task_id}/events"), _requests(url, "/v1/tasks")
    assert after[0] - before[0] == 1 and after[1] - before[1] == 3


def test_failures_raise_the_typed_errors(full_stack: Cluster) -> None:
    with pytest.raises(errors.InvalidArgument, match="steps"):
        run_task([], url=full_stack.gateway_url)
    with pytest.raises(errors.InvalidArgument, match=r"network: allow\[0\]: '169\.254\.169\.254' is never reachable"):
        Sandbox.create(network={"allow": ["169.254.169.254"]}, url=full_stack.gateway_url)
    with pytest.raises(errors.Unavailable, match="cannot reach Corral"):
        run_task([{"tool": "shell", "command": "true"}], url="http://127.0.0.1:9")


def test_commands_stream_run_in_the_background_and_fail_typed(full_stack: Cluster) -> None:
    with Sandbox.create(url=full_stack.gateway_url) as sb:
        ok = sb.run_shell("echo out; echo err >&2; pwd")
        assert (ok.exit_code, ok.stdout, ok.stderr) == (0, "out\n/workspace\n", "err\n")
        assert sb.run_shell("exit 7").exit_code == 7
        with pytest.raises(CommandFailed) as failed:
            sb.run_shell("echo partial; exit 3", check=True)
        assert failed.value.exit_code == 3 and failed.value.stdout == "partial\n"
        with pytest.raises(Timeout):
            sb.run_shell("sleep 30", timeout=1, check=True)

        # Live output: each line arrives as its own piece, in order; callbacks see the same.
        stream = sb.run_shell("for i in 1 2 3; do echo $i; sleep 0.3; done", stream=True)
        pieces = [chunk.text for chunk in stream]
        assert "".join(pieces) == "1\n2\n3\n" and len(pieces) == 3, pieces
        assert stream.result is not None and stream.result.exit_code == 0
        heard: list[str] = []
        result = sb.run_shell("echo a; echo b >&2", on_stdout=heard.append, on_stderr=heard.append)
        assert sorted(heard) == ["a\n", "b\n"] and result.stdout == "a\n" and result.stderr == "b\n"

        # A background command: stdin in, output back, then killed.
        cat = sb.run_shell("cat", background=True, stdin=True)
        cat.send_stdin("hello\n", close=True)
        assert cat.wait().stdout == "hello\n"
        sleeper = sb.run_shell("sleep 300", background=True)
        sleeper.kill()
        assert sleeper.wait().exit_code != 0

        # Files as bytes, byte for byte; the files namespace for the rest.
        blob = bytes(range(256)) * 1000
        sb.write_file("data/blob.bin", blob)
        assert sb.read_file("data/blob.bin", binary=True) == blob
        assert [(f.name, f.type, f.size) for f in sb.files.list("data")] == [("blob.bin", "file", len(blob))]
        sb.files.rename("data/blob.bin", "data/moved.bin")
        assert sb.files.stat("data/moved.bin").size == len(blob)
        sb.files.remove("data")
        with pytest.raises(errors.NotFound, match=r"no such file: data/moved\.bin"):
            sb.read_file("data/moved.bin")
        with pytest.raises(errors.InvalidArgument, match="refused path"):
            sb.read_file("/etc/passwd")


def test_async_commands(full_stack: Cluster) -> None:
    async def go() -> tuple[str, list[str]]:
        async with await AsyncSandbox.create(url=full_stack.gateway_url) as sb:
            first = await sb.run_shell("echo hi")
            stream = await sb.run_shell("echo x; echo y", stream=True)
            pieces = [chunk.text async for chunk in stream]
            return first.stdout, pieces

    stdout, pieces = asyncio.run(go())
    assert stdout == "hi\n" and "".join(pieces) == "x\ny\n"
