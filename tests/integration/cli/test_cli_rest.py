"""The CLI over REST against a real `corral up`: every client command through the gateway
(--url), `exec`'s exit code, `cp` both ways byte for byte, `logs -f`, `ls`'s table, a closed
pipe, real URLs, shell completion, and the client importing nothing of the server's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cli_helpers import REPO, CorralUp, corral_command

from corral import errors

pytestmark = pytest.mark.timeout(120)


def cli(up: CorralUp, *args: str, stdin: str | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """`corral --url GATEWAY ARGS` as a user on another machine would run it: no data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    return subprocess.run(corral_command("--url", up.gateway, *args), input=stdin, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_run_exits_with_the_failed_steps_exit_code_numbered_from_1(corral_up: CorralUp) -> None:
    result = cli(corral_up, "run", "echo oops >&2; exit 7", "echo never")
    assert result.returncode == 7, result.stderr
    assert "oops" in result.stderr and "never" not in result.stdout
    assert "--- step 1/2 failed, exit code 7" in result.stderr
    assert ": step 1 (shell) failed: exited with code 7\n" in result.stderr  # the task's error, 1-based
    assert "step 0" not in result.stderr and "Traceback" not in result.stderr
    # A step without an exit code (a missing file) fails the run with 1.
    missing = cli(corral_up, "run", "-f", "-", stdin='[{"tool": "read_file", "path": "nope.txt"}]')
    assert missing.returncode == 1, missing.stderr
    assert "no such file: nope.txt" in missing.stderr


def test_invalid_task_is_the_gateways_clear_message(corral_up: CorralUp, tmp_path: Path) -> None:
    task = tmp_path / "task.json"
    task.write_text('{"steps": [{"tool": "shell"}, {"tool": "teleport"}]}')
    result = cli(corral_up, "run", "-f", str(task))
    assert result.returncode == 2
    assert result.stderr.startswith("corral run: INVALID_ARGUMENT: steps[0]"), result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def test_events_into_a_closed_pipe_end_quietly(corral_up: CorralUp) -> None:
    command = " ".join(f"'{word}'" for word in corral_command("--url", corral_up.gateway, "run", "--events", "seq 1 50000"))
    piped = subprocess.run(["bash", "-c", f"set -o pipefail; {command} | head -n 2"], capture_output=True,
                           text=True, timeout=90)
    assert piped.returncode == 141, piped.stderr  # as a process SIGPIPE ended
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr, piped.stderr
    assert [json.loads(line)["type"] for line in piped.stdout.splitlines()] == ["scheduled", "started"]


def test_ls_status_logs_and_cancel(corral_up: CorralUp) -> None:
    done = cli(corral_up, "run", "--json", "echo from-ls-test", "--python", "print(6 * 7)")
    assert done.returncode == 0, done.stderr
    task_id = json.loads(done.stdout)["task_id"]

    table = cli(corral_up, "ls", "--limit", "5").stdout.splitlines()
    assert table[0].split() == ["TASK", "STATUS", "AGE", "STEPS", "COMMAND"]
    row = next(line for line in table if line.startswith(task_id))
    assert row.split()[1:4] == ["completed", row.split()[2], "2"] and row.split()[2][-1] in "smhd"
    assert row.endswith("shell: echo from-ls-test (+1 steps)")
    listed = json.loads(cli(corral_up, "ls", "--json", "--state", "completed").stdout)
    assert task_id in [t["task_id"] for t in listed]

    status = cli(corral_up, "status", task_id).stdout.splitlines()
    assert status[0] == f"task {task_id}: completed"
    assert status[1].split()[:5] == ["step", "1", "shell", "completed", "exit"]
    assert status[2].split()[:5] == ["step", "2", "python", "completed", "exit"]
    assert cli(corral_up, "logs", task_id).stdout == "from-ls-test\n42\n"

    # logs -f follows a running task to its end, as it prints.
    from corral.sdk import Task

    with Task.submit({"steps": [{"tool": "shell", "command": "echo first; sleep 1; echo second"}]},
                     url=corral_up.gateway) as running:
        followed = cli(corral_up, "logs", "-f", running.id)
    assert followed.returncode == 0 and followed.stdout == "first\nsecond\n", followed.stderr

    sleeper = Task.submit({"steps": [{"tool": "shell", "command": "sleep 300"}]}, url=corral_up.gateway)
    with sleeper:
        cancelled = cli(corral_up, "cancel", sleeper.id)
        assert cancelled.returncode == 0 and cancelled.stdout.startswith(f"task {sleeper.id}: "), cancelled.stderr
        assert sleeper.wait().status == "cancelled"
    unknown = cli(corral_up, "status", "no-such-task")
    assert unknown.returncode == 2 and unknown.stderr.startswith("corral status: NOT_FOUND: ")


def test_sandbox_exec_and_cp_both_ways(corral_up: CorralUp, tmp_path: Path) -> None:
    created = cli(corral_up, "sandbox", "create")
    assert created.returncode == 0, created.stderr
    sandbox = created.stdout.strip()
    try:
        assert f"jupyter: {corral_up.gateway}/v1/sandboxes/{sandbox}/jupyter/?token=" in created.stderr
        assert "GATEWAY" not in created.stderr
        table = cli(corral_up, "sandbox", "ls").stdout.splitlines()
        assert table[0].split() == ["SANDBOX", "STATUS", "AGE", "FEATURES", "EXPIRES"]
        assert any(line.startswith(sandbox) and " active " in line for line in table)

        ran = cli(corral_up, "exec", sandbox, "--", "sh", "-c", "echo out; echo err >&2; exit 7")
        assert (ran.returncode, ran.stdout, ran.stderr) == (7, "out\n", "err\n")
        line = cli(corral_up, "exec", sandbox, "--", "echo $HOME | tr a-z A-Z")  # one word: a shell line
        assert (line.returncode, line.stdout) == (0, "/WORKSPACE\n")

        blob = bytes(range(256)) * 64
        source = tmp_path / "src"
        (source / "sub").mkdir(parents=True)
        (source / "a.txt").write_text("alpha\n")
        (source / "sub" / "b.bin").write_bytes(blob)
        assert cli(corral_up, "cp", str(source), f"{sandbox}:proj").returncode == 0
        assert cli(corral_up, "exec", sandbox, "--", "find proj -type f | sort").stdout == "proj/a.txt\nproj/sub/b.bin\n"
        assert cli(corral_up, "cp", str(source / "a.txt"), f"{sandbox}:proj/").returncode == 0  # into a directory
        assert cli(corral_up, "exec", sandbox, "--", "cat", "proj/a.txt").stdout == "alpha\n"

        back = tmp_path / "back"
        assert cli(corral_up, "cp", f"{sandbox}:proj", str(back)).returncode == 0
        assert (back / "sub" / "b.bin").read_bytes() == blob and (back / "a.txt").read_text() == "alpha\n"
        assert cli(corral_up, "cp", f"{sandbox}:proj/sub/b.bin", str(tmp_path)).returncode == 0
        assert (tmp_path / "b.bin").read_bytes() == blob

        missing = cli(corral_up, "cp", f"{sandbox}:nope", str(tmp_path / "x"))
        assert missing.returncode == 2 and missing.stderr == "corral cp: NOT_FOUND: no such file or directory: nope\n"
        both_local = cli(corral_up, "cp", str(source), str(tmp_path / "y"))
        assert both_local.returncode == 2 and "one side must be SANDBOX_ID:PATH" in both_local.stderr
    finally:
        assert cli(corral_up, "sandbox", "rm", sandbox).returncode == 0
    gone = cli(corral_up, "exec", sandbox, "--", "true")
    assert gone.returncode == 2 and "Traceback" not in gone.stderr, gone.stderr


def test_sdk_raises_not_found_for_a_missing_file(corral_up: CorralUp) -> None:
    from corral import Sandbox

    with Sandbox.create(url=corral_up.gateway) as sb:
        with pytest.raises(errors.NotFound) as missing:
            sb.read_file("missing.txt")
        assert str(missing.value) == "no such file: missing.txt"
        with pytest.raises(errors.NotFound):
            sb.files.stat("missing/dir")
        sb.write_file("here.txt", "x")
        assert sb.read_file("here.txt") == "x"


def test_sdk_task_and_async_task_follow_list_and_cancel(corral_up: CorralUp) -> None:
    """What the CLI's task commands stand on: Task (blocking) and AsyncTask, the same names."""
    import asyncio

    from corral import AsyncSandbox, AsyncTask, Task

    with Task.submit({"steps": [{"tool": "shell", "command": "echo a; exit 5"}]}, url=corral_up.gateway) as task:
        kinds = [kind for kind, _ in task.events()]
        assert kinds[0] == "scheduled" and kinds[-1] == "finished" and "output" in kinds
        final = task.status()
        assert (final.status, final.steps[0].exit_code, final.steps[0].stdout) == ("failed", 5, "a\n")
        assert task.id in [t.task_id for t in Task.list(state="failed", limit=20, url=corral_up.gateway)]

    async def go() -> tuple[str, str, bool]:
        async with await AsyncTask.submit({"steps": [{"tool": "shell", "command": "sleep 300"}]},
                                          url=corral_up.gateway) as sleeper:
            async for kind, _ in sleeper.events():
                if kind == "step_started":
                    await sleeper.cancel()
            ended = (await sleeper.status()).status
        async with await AsyncTask.submit({"steps": [{"tool": "shell", "command": "echo b"}]},
                                          url=corral_up.gateway) as echo:
            done = await echo.wait()
        async with await AsyncSandbox.create(url=corral_up.gateway) as sb:
            listed = sb.id in [row["sandbox_id"] for row in await AsyncSandbox.list(url=corral_up.gateway)]
        return ended, done.steps[0].stdout, listed

    assert asyncio.run(go()) == ("cancelled", "b\n", True)


def test_shell_completion_completes_commands_and_flags() -> None:
    script = subprocess.run(corral_command("completion", "bash"), capture_output=True, text=True, timeout=60,
                            cwd=REPO).stdout

    def complete(*words: str) -> list[str]:
        probe = f"""{script}
COMP_WORDS=(corral {' '.join(words)}); COMP_CWORD={len(words)}; _corral; printf '%s\\n' "${{COMPREPLY[@]}}" """
        return subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30).stdout.split()

    assert complete("ex") == ["exec"]
    assert "--events" in complete("run", "--e") and "--env" in complete("run", "--e")
    assert set(complete("sandbox", "")) >= {"create", "ls", "rm", "extend", "network"}


# --- the client installs and imports nothing of the server's ---------------------------------

SERVER_PACKAGES = ("grpc", "sqlalchemy", "fastapi", "uvicorn", "docker", "pydantic", "google.protobuf", "structlog")
REFUSING_HOOK = f"""
import sys
REFUSED = {SERVER_PACKAGES!r}
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if any(name == r or name.startswith(r + ".") for r in REFUSED):
            raise ImportError(f"the client imported {{name}}, a server package")
        return None
sys.meta_path.insert(0, Refuse())
"""


def run_refusing(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    return subprocess.run([sys.executable, "-c", REFUSING_HOOK + code], capture_output=True, text=True,
                          timeout=90, env=env, cwd=REPO)


def test_cli_and_sdk_run_with_every_server_package_refused(corral_up: CorralUp) -> None:
    def corral(*args: str) -> str:
        argv = ["corral", "--url", corral_up.gateway, *args]
        return f"import runpy; sys.argv = {argv!r}\nrunpy.run_module('corral.cli', run_name='__main__')\n"

    ran = run_refusing(corral("run", "-q", "echo x"))
    assert (ran.returncode, ran.stdout) == (0, "x\n"), ran.stderr
    for args in (("ls",), ("sandbox", "ls"), ("--help",), ("run", "--help"), ("--version",)):
        other = run_refusing(corral(*args))
        assert other.returncode == 0, (args, other.stderr)
    sdk = run_refusing(f"""
from corral import Sandbox, run_task
with Sandbox.create(url={corral_up.gateway!r}) as sb:
    sb.write_file("app.py", "print(6 * 7)")
    print(sb.run_python("exec(open('app.py').read())").stdout, end="")
    print(sb.run_shell("cat app.py").stdout)
print(run_task([{{"tool": "shell", "command": "echo one-shot"}}], url={corral_up.gateway!r}).steps[0].stdout, end="")
print(sorted(m for m in sys.modules if m.split(".")[0] in ("httpx", "asyncio")))
""")
    assert sdk.returncode == 0, sdk.stderr
    # The blocking SDK needs neither httpx nor asyncio (the asyncio client's).
    assert sdk.stdout == "42\nprint(6 * 7)\none-shot\n[]\n", sdk.stdout
    # The hook itself works: the server's code cannot load under it.
    refused = run_refusing("import corral.grpc_errors")
    assert refused.returncode == 1 and "the client imported grpc, a server package" in refused.stderr


def test_pyproject_client_and_server_dependencies_version_changelog_typed() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = [d.split(">")[0].split("<")[0].split("[")[0].split("=")[0].strip().lower() for d in project["dependencies"]]
    assert sorted(names) == ["httpx", "pyyaml"]
    server = " ".join(project["optional-dependencies"]["server"])
    for package in ("grpcio", "sqlalchemy", "fastapi", "uvicorn", "docker", "pydantic", "protobuf"):
        assert package in server, package
    assert project["dynamic"] == ["version"]
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["dynamic"]["version"] == {"attr": "corral.__version__"}
    assert "py.typed" in setuptools["package-data"]["*"] and (REPO / "corral" / "py.typed").is_file()

    import corral

    version = subprocess.run(corral_command("--version"), capture_output=True, text=True, timeout=60, cwd=REPO)
    assert version.stdout == f"corral {corral.__version__}\n"
    assert f"## {corral.__version__}" in (REPO / "CHANGELOG.md").read_text()
    # What installs Corral for the services installs the server's extra.
    assert "'.[server,dev]'" in (REPO / "scripts" / "bootstrap").read_text()
    assert '["optional-dependencies"]["server"]' in (REPO / "deploy" / "build-images").read_text()
