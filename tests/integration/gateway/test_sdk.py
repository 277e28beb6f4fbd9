"""The SDK (corral/sdk/) against a real embedded Corral through its REST gateway: sandbox
lifetime, one-shot tasks, tasks in a sandbox, and the typed errors of each failure."""

from __future__ import annotations

import asyncio

import pytest
from harness import Cluster

from corral import AsyncSandbox, Sandbox, errors, run_task, run_task_async


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


def test_failures_raise_the_typed_errors(full_stack: Cluster) -> None:
    with pytest.raises(errors.InvalidArgument, match="steps"):
        run_task([], url=full_stack.gateway_url)
    with pytest.raises(errors.InvalidArgument, match=r"network: allow\[0\]: '169\.254\.169\.254' is never reachable"):
        Sandbox.create(network={"allow": ["169.254.169.254"]}, url=full_stack.gateway_url)
    with pytest.raises(errors.Unavailable, match="cannot reach Corral"):
        run_task([{"tool": "shell", "command": "true"}], url="http://127.0.0.1:9")
