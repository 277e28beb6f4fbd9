"""read_file / write_file: paths stay inside /tasks/{task_id}; sizes are capped."""

from __future__ import annotations

from .conftest import ExecutorClient, ExecutorFactory, spec


async def test_write_then_read(executor: ExecutorClient) -> None:
    task_id, outcome = await executor.run_steps(
        [
            {"tool": "write_file", "path": "notes/todo.txt", "content": "buy milk\n"},
            {"tool": "read_file", "path": "notes/todo.txt"},
            {"tool": "shell", "command": "cat notes/todo.txt"},
        ]
    )
    assert outcome.state == "TASK_STATE_COMPLETED", outcome.finished
    assert "wrote 9 bytes" in outcome.step(0).stdout
    assert outcome.step(1).stdout == "buy milk\n"
    assert outcome.step(2).stdout == "buy milk\n"
    assert (executor.host_task_dir(task_id) / "notes" / "todo.txt").read_text() == "buy milk\n"


async def test_absolute_path_inside_task_dir_is_allowed(executor: ExecutorClient) -> None:
    task_id = executor.new_task_id()
    _, outcome = await executor.run(
        spec(
            [
                {"tool": "write_file", "path": f"/tasks/{task_id}/a.txt", "content": "A"},
                {"tool": "read_file", "path": f"/tasks/{task_id}/a.txt"},
            ]
        ),
        task_id=task_id,
    )
    assert outcome.state == "TASK_STATE_COMPLETED", outcome.finished
    assert outcome.step(1).stdout == "A"


async def test_paths_leading_out_are_refused(executor: ExecutorClient) -> None:
    _, outcome = await executor.run_steps(
        [
            {"tool": "read_file", "path": "../x", "continue_on_error": True},
            {"tool": "read_file", "path": "/etc/passwd", "continue_on_error": True},
            {"tool": "shell", "command": "ln -s /etc/passwd link && ln -s / rootlink"},
            {"tool": "read_file", "path": "link", "continue_on_error": True},
            {"tool": "write_file", "path": "rootlink/tmp/x", "content": "x", "continue_on_error": True},
            {"tool": "write_file", "path": "a/../../escape", "content": "x", "continue_on_error": True},
            {"tool": "read_file", "path": "missing.txt", "continue_on_error": True},
        ]
    )
    errors = [outcome.step(i).error for i in range(7)]
    assert "'..' is not allowed" in errors[0]
    assert "absolute paths must be inside /tasks/" in errors[1]
    assert "symlink leading outside" in errors[3]
    assert "symlink leading outside" in errors[4]
    assert "'..' is not allowed" in errors[5]
    assert "no such file" in errors[6]
    for i in (0, 1, 3, 4, 5, 6):
        assert outcome.step_state(i) == "STEP_STATE_FAILED"
        assert outcome.step(i).stdout == ""
    # Every failure had continue_on_error, so the task itself completes.
    assert outcome.state == "TASK_STATE_COMPLETED"


async def test_refused_path_fails_the_task(executor: ExecutorClient) -> None:
    _, outcome = await executor.run_steps(
        [{"tool": "read_file", "path": "/etc/shadow"}, {"tool": "shell", "command": "true"}]
    )
    assert outcome.state == "TASK_STATE_FAILED"
    assert outcome.step_state(1) == "STEP_STATE_SKIPPED"


async def test_file_sizes_are_capped(executor_factory: ExecutorFactory) -> None:
    executor = await executor_factory(max_read_file_bytes=1000, max_write_file_bytes=1000)
    _, outcome = await executor.run_steps(
        [
            {"tool": "write_file", "path": "big.txt", "content": "x" * 1001, "continue_on_error": True},
            {"tool": "shell", "command": "head -c 5000 /dev/zero > big.bin"},
            {"tool": "read_file", "path": "big.bin", "continue_on_error": True},
            {"tool": "write_file", "path": "ok.txt", "content": "x" * 1000},
        ]
    )
    assert "larger than the write limit of 1000 bytes" in outcome.step(0).error
    assert "larger than the read limit of 1000 bytes" in outcome.step(2).error
    assert outcome.step_state(3) == "STEP_STATE_COMPLETED"
