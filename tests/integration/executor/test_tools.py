"""Every step tool, and the DESIGN.md curl example, run in a real bubblewrap sandbox."""

from __future__ import annotations

import json

import grpc
import pytest

from corral.v1 import gui_pb2, task_pb2

from .conftest import ExecutorClient, grpc_code


async def test_curl_example_completes_with_hello(executor: ExecutorClient) -> None:
    task_id, outcome = await executor.run_steps(
        [
            {"tool": "shell", "command": "ls -la /app"},
            {"tool": "python", "code": 'with open("hello.txt", "w") as f: f.write("Hello from the agent!")'},
            {"tool": "shell", "command": "cat hello.txt"},
        ]
    )
    assert outcome.state == "TASK_STATE_COMPLETED", outcome.finished
    assert [outcome.step_state(i) for i in range(3)] == ["STEP_STATE_COMPLETED"] * 3
    assert "agent.py" in outcome.step(0).stdout
    assert outcome.step(2).stdout == "Hello from the agent!"
    assert outcome.step(2).exit_code == 0

    host_dir = executor.host_task_dir(task_id)
    assert (host_dir / "hello.txt").read_text() == "Hello from the agent!"
    log_text = (host_dir / "agent.log").read_text()
    assert "ls -la /app" in log_text and "Hello from the agent!" in log_text
    memory = json.loads((host_dir / "memory.json").read_text())
    assert [entry["tool"] for entry in memory] == ["shell", "python", "shell"]
    assert memory[2]["stdout"] == "Hello from the agent!"
    assert set(memory[0]) >= {"step", "tool", "action", "status", "exit_code", "stdout", "stderr", "error", "time"}


async def test_events_arrive_in_order(executor: ExecutorClient) -> None:
    task_id, outcome = await executor.run_steps([{"tool": "shell", "command": "echo one; echo two >&2"}])
    kinds = outcome.kinds()
    assert kinds[0] == "started" and kinds[1] == "step_started"
    assert kinds[-2:] == ["step_finished", "finished"]
    assert "output" in kinds
    started = outcome.events[0].started
    assert started.task_dir == f"/tasks/{task_id}"
    assert (executor.host_task_dir(task_id) / "agent.log").is_file()
    assert started.executor_id == executor.executor.executor_id
    chunks = [e.output for e in outcome.events if e.WhichOneof("event") == "output"]
    assert "".join(c.data for c in chunks if c.stream == task_pb2.OUTPUT_STREAM_STDOUT) == "one\n"
    assert "".join(c.data for c in chunks if c.stream == task_pb2.OUTPUT_STREAM_STDERR) == "two\n"
    # Numbered by the executor, 1..N, so a scheduler coming back can resume after any of them.
    assert [e.sequence for e in outcome.events] == list(range(1, len(outcome.events) + 1))
    result = outcome.step(0)
    assert result.started_at.seconds > 0 and result.finished_at.seconds > 0
    assert result.stdout == "one\n" and result.stderr == "two\n"


async def test_shell_failure_fails_task_and_skips_the_rest(executor: ExecutorClient) -> None:
    _, outcome = await executor.run_steps(
        [
            {"tool": "shell", "command": "echo before; exit 3"},
            {"tool": "shell", "command": "echo never"},
        ]
    )
    assert outcome.state == "TASK_STATE_FAILED"
    assert outcome.step(0).exit_code == 3
    assert "exited with code 3" in outcome.step(0).error
    assert outcome.step_state(1) == "STEP_STATE_SKIPPED"
    assert "step 1 (shell) failed" in outcome.finished.error  # numbered from 1, as the CLI shows steps


async def test_python_traceback_has_line_numbers(executor: ExecutorClient) -> None:
    _, outcome = await executor.run_steps(
        [{"tool": "python", "code": "import sys\nprint(sys.version_info[0])\nraise ValueError('boom')\n"}]
    )
    result = outcome.step(0)
    assert result.stdout == "3\n"
    assert "line 3" in result.stderr and "ValueError: boom" in result.stderr
    assert result.exit_code == 1
    assert outcome.state == "TASK_STATE_FAILED"


async def test_typescript_runs_interfaces_generics_enums(executor: ExecutorClient) -> None:
    code = """
interface Point { x: number; y: number }
enum Color { Red = "red", Green = "green" }
function largest<T>(items: T[], score: (item: T) => number): T {
  return items.reduce((best, item) => (score(item) > score(best) ? item : best));
}
const points: Point[] = [{ x: 1, y: 2 }, { x: 3, y: 4 }];
const far: Point = largest(points, (p) => p.x + p.y);
console.log(`far=${far.x},${far.y} color=${Color.Green}`);
"""
    _, outcome = await executor.run_steps([{"tool": "typescript", "code": code}])
    assert outcome.state == "TASK_STATE_COMPLETED", (outcome.step(0).stderr, outcome.step(0).error)
    assert outcome.step(0).stdout == "far=3,4 color=green\n"


async def test_typescript_type_error_fails_with_compiler_message(executor: ExecutorClient) -> None:
    code = 'const ok: number = 1;\nconst bad: number = "text";\nconsole.log(ok, bad);\n'
    _, outcome = await executor.run_steps([{"tool": "typescript", "code": code}])
    result = outcome.step(0)
    assert outcome.state == "TASK_STATE_FAILED"
    assert result.exit_code == 2
    assert "main.ts:2:7 - error TS2322" in result.stderr
    assert "TypeScript compile error" in result.error and "TS2322" in result.error
    assert result.stdout == ""


async def test_typescript_syntax_error_fails(executor: ExecutorClient) -> None:
    _, outcome = await executor.run_steps([{"tool": "typescript", "code": "let x = ;\n"}])
    assert outcome.state == "TASK_STATE_FAILED"
    assert "main.ts:1:9 - error TS1109" in outcome.step(0).stderr


@pytest.mark.timeout(240)
async def test_typescript_steps_share_the_sandboxs_checker_and_survive_its_death(executor: ExecutorClient) -> None:
    # The first TypeScript step starts the sandbox's warm checker; later ones use it, see a
    # file changed in between, and get a new checker when a step killed the old one.
    steps: list[dict[str, object]] = [
        {"tool": "typescript", "code": "const n: number = 6 * 7; console.log(n, process.argv.length);", "timeout": 120},
        {"tool": "typescript", "code": 'const s: string = 42;\n', "continue_on_error": True},
        {"tool": "shell", "command": "pkill -KILL -f 'ts-run[.]js --serve' && echo killed"},
        {"tool": "typescript", "code": "console.log(['late'].map((w) => w.toUpperCase()).join());", "timeout": 120},
    ]
    _, outcome = await executor.run_steps(steps)
    assert outcome.step(0).stdout == "42 2\n", (outcome.step(0).stderr, outcome.step(0).error)
    assert outcome.step(1).exit_code == 2 and "main.ts:1:7 - error TS2322" in outcome.step(1).stderr
    assert outcome.step(2).stdout == "killed\n"
    assert outcome.step(3).stdout == "LATE\n", (outcome.step(3).stderr, outcome.step(3).error)


STANDBY_STEP = """
const fs = require("fs");
const stat = fs.readFileSync("/proc/self/stat", "utf8").split(") ")[1].split(" ");
const command = fs.readFileSync("/proc/self/cmdline", "utf8").split("\\0");
const own = stat[2] === String(process.pid) && stat[3] === String(process.pid);
console.log(command.includes("--standby"), process.cwd(), process.env.MARK, own, process.argv.length);
"""


@pytest.mark.timeout(240)
async def test_typescript_step_in_a_standby_node_is_still_its_own_step(executor: ExecutorClient) -> None:
    # After the first, a checked step runs in a node started ahead of it (ts-run.js --standby):
    # it still has the step's directory, environment, session and process group, timeout
    # (the whole tree killed), file-size limit and output cap; one standby waits after it.
    steps: list[dict[str, object]] = [
        {"tool": "typescript", "code": "console.log('first');", "timeout": 120},
        {"tool": "typescript", "code": STANDBY_STEP},
        {"tool": "typescript", "code": "console.log('looping'); setInterval(() => {}, 1000);", "timeout": 3,
         "continue_on_error": True},
        {"tool": "typescript", "code": "require('fs').writeFileSync('big.bin', Buffer.alloc(3_000_000));",
         "continue_on_error": True},
        {"tool": "typescript", "code": "console.log('x'.repeat(5000));"},
        {"tool": "shell", "command": "pgrep -f 'ts-run[.]js --standby' | wc -l"},
    ]
    task_id, outcome = await executor.run_steps(
        steps, env={"MARK": "marked"}, limits={"max_file_size_mb": 1, "max_output_bytes": 1024}
    )
    assert outcome.step(0).stdout == "first\n", (outcome.step(0).stderr, outcome.step(0).error)
    assert outcome.step(1).stdout == f"true /tasks/{task_id} marked true 2\n", outcome.step(1).stderr
    assert outcome.step(2).stdout == "looping\n" and "timed out after 3s" in outcome.step(2).error
    assert "file size limit (1 MiB)" in outcome.step(3).error
    assert outcome.step(4).stdout == "x" * 1024 and outcome.step(4).stdout_truncated
    assert outcome.step(5).stdout.strip() == "1"


async def test_gui_step_gets_a_desktop_and_screenshot(executor: ExecutorClient) -> None:
    """A gui step gives the sandbox a desktop (more in tests/integration/desktop)."""
    task_id, outcome = await executor.run_steps([
        {"tool": "gui", "action": "screenshot"},
        {"tool": "gui", "action": "click", "x": 5000, "y": 10},
    ])
    assert outcome.step_state(0) == "STEP_STATE_COMPLETED", outcome.step(0).error
    assert f"/tasks/{task_id}/screenshots/step-000.png" in outcome.step(0).stdout
    assert "off the screen" in outcome.step(1).error


async def test_statically_bad_gui_steps_are_refused_at_admission(executor: ExecutorClient) -> None:
    """The executor runs the scheduler's own checks: an unknown key never reaches a sandbox."""
    bad_key = task_pb2.Step(gui=task_pb2.GuiAction(key=gui_pb2.PressKeyRequest(keys="no-such-key")))
    no_action = task_pb2.Step(gui=task_pb2.GuiAction())
    for step, message in ((bad_key, "steps[0].gui.key.keys: unknown key 'no-such-key'"),
                          (no_action, "steps[0].gui has no action")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await executor.run(task_pb2.TaskSpec(steps=[step]))
        assert grpc_code(err.value) == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (err.value.details() or "")


async def test_task_env_reaches_steps(executor: ExecutorClient) -> None:
    task_id, outcome = await executor.run_steps(
        [{"tool": "shell", "command": 'echo "$GREETING $HOME $(pwd)"'}], env={"GREETING": "hi"}
    )
    assert outcome.step(0).stdout == f"hi /tasks/{task_id} /tasks/{task_id}\n"


async def test_list_files_lists_the_task_directory_confined_like_read_file(executor: ExecutorClient) -> None:
    task_id, outcome = await executor.run_steps([
        {"tool": "write_file", "path": "src/main.py", "content": "print(1)\n"},
        {"tool": "shell", "command": "mkdir -p src/pkg && ln -s /etc/passwd src/link && ln -s /etc src/out"},
        {"tool": "list_files", "path": "src"},
        {"tool": "list_files"},
        {"tool": "list_files", "path": "../", "continue_on_error": True},
        {"tool": "list_files", "path": "src/out", "continue_on_error": True},
        {"tool": "list_files", "path": "src/main.py", "continue_on_error": True},
        {"tool": "list_files", "path": "/etc", "continue_on_error": True},
    ])
    assert outcome.state == "TASK_STATE_COMPLETED", outcome.finished
    listing = json.loads(outcome.step(2).stdout)
    assert listing["path"] == f"/tasks/{task_id}/src" and not listing["truncated"]
    entries = {e["name"]: e for e in listing["entries"]}
    assert [e["name"] for e in listing["entries"]] == ["link", "main.py", "out", "pkg"]
    assert entries["main.py"]["type"] == "file" and entries["main.py"]["size"] == 9
    assert entries["main.py"]["mtime"] > 1_700_000_000
    assert entries["pkg"]["type"] == "directory"
    # Links are reported as links, never followed.
    assert entries["link"]["type"] == "symlink" and entries["out"]["type"] == "symlink"
    top = [e["name"] for e in json.loads(outcome.step(3).stdout)["entries"]]
    assert "src" in top and "agent.log" in top
    assert "'..' is not allowed" in outcome.step(4).error
    assert "symlink leading outside" in outcome.step(5).error
    assert "src/main.py is not a directory" in outcome.step(6).error
    assert "absolute paths must be inside" in outcome.step(7).error
    assert [outcome.step_state(i) for i in (4, 5, 6, 7)] == ["STEP_STATE_FAILED"] * 4
