"""A long-lived sandbox's workspace (issue 12, point 1): every task in it works in /workspace,
its HOME too, so what one task writes the next reads by the same relative path; file steps
reach the workspace, /tmp and the task's own directory, and nothing else. Both drivers."""

from __future__ import annotations

import os
import time

from google.protobuf.timestamp_pb2 import Timestamp

from corral.internal.v1 import executor_pb2
from corral.v1 import sandbox_pb2

from .conftest import ExecutorClient, ExecutorFactory, spec


async def create_sandbox(executor: ExecutorClient) -> str:
    sandbox_id = f"sbx-{os.urandom(4).hex()}"
    expires = Timestamp()
    expires.FromSeconds(int(time.time()) + 600)
    await executor.stub.CreateSandbox(
        executor_pb2.CreateSandboxRequest(sandbox_id=sandbox_id, spec=sandbox_pb2.SandboxSpec(), expires_at=expires)
    )
    return sandbox_id


async def test_the_workspace_persists_across_tasks(executor_factory: ExecutorFactory) -> None:
    executor = await executor_factory()
    sandbox_id = await create_sandbox(executor)
    first_id, first = await executor.run(spec([
        {"tool": "write_file", "path": "main.py", "content": "print(6 * 7)"},
        {"tool": "shell", "command": "pwd; echo $HOME; echo $CORRAL_TASK_DIR; echo scratch > /tmp/x; mkdir -p src"},
        {"tool": "write_file", "path": "/workspace/src/lib.txt", "content": "lib"},
    ], sandbox_id=sandbox_id))
    assert first.state == "TASK_STATE_COMPLETED", first.finished
    assert first.step(1).stdout == f"/workspace\n/workspace\n/tasks/{first_id}\n"

    second_id = executor.new_task_id()
    _, second = await executor.run(spec([
        {"tool": "read_file", "path": "main.py"},
        {"tool": "python", "code": "exec(open('main.py').read())"},
        {"tool": "read_file", "path": "/tmp/x"},
        {"tool": "read_file", "path": "src/lib.txt"},
        {"tool": "write_file", "path": f"/tasks/{second_id}/note.txt", "content": "own"},
    ], sandbox_id=sandbox_id), task_id=second_id)
    assert second.state == "TASK_STATE_COMPLETED", second.finished
    assert second.step(0).stdout == "print(6 * 7)"
    assert second.step(1).stdout == "42\n"
    assert second.step(2).stdout == "scratch\n"
    assert second.step(3).stdout == "lib"
    managed = executor.executor.runner.sandboxes.get(sandbox_id)
    workspace = managed.host_tasks_dir / ".workspace"
    assert (workspace / "main.py").read_text() == "print(6 * 7)"
    # Each task still has its own directory, for its agent.log (and its file steps may use it).
    assert (managed.host_tasks_dir / second_id / "agent.log").exists()
    assert (managed.host_tasks_dir / second_id / "note.txt").read_text() == "own"


async def test_file_steps_stay_in_the_workspace_tmp_and_the_task_directory(
    executor_factory: ExecutorFactory,
) -> None:
    executor = await executor_factory()
    sandbox_id = await create_sandbox(executor)
    refused = [
        "/etc/passwd",
        "../../etc/passwd",
        "/tasks/other-task/agent.log",
        "/app/agent.py",
    ]
    steps: list[dict[str, object]] = [
        {"tool": "shell", "command": "ln -s /etc/passwd escape; echo ok"},
        {"tool": "read_file", "path": "escape"},
        *({"tool": "read_file", "path": path} for path in refused),
        {"tool": "write_file", "path": "/tmp/ok.txt", "content": "ok"},
    ]
    for step in steps:
        step["continue_on_error"] = True
    _, outcome = await executor.run(spec(steps, sandbox_id=sandbox_id))
    assert outcome.step_state(0) == "STEP_STATE_COMPLETED"
    assert "symlink leading outside /workspace" in outcome.step(1).error, outcome.step(1)
    for n, path in enumerate(refused, start=2):
        assert outcome.step_state(n) == "STEP_STATE_FAILED", (path, outcome.step(n))
        assert "refused path" in outcome.step(n).error, (path, outcome.step(n).error)
    assert outcome.step_state(len(steps) - 1) == "STEP_STATE_COMPLETED"
