"""The unisolated local driver (drivers/local.py): the real agent as a host subprocess, for tests
of the executor's step policy. It must run steps, read and write files with the executor's
paths, stop a step on cancel and by timeout, and leave nothing running when closed."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.config import Settings
from services.executor.drivers.base import (
    FileRefused,
    ProcessRequest,
    Sandbox,
    SandboxConfig,
    SandboxError,
    SandboxLimits,
    StreamName,
)
from services.executor.drivers.local import LocalDriver

from .conftest import host_processes_matching


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    settings = Settings(data_dir=tmp_path / "data")
    driver = LocalDriver(settings)
    task_dir = settings.tasks_dir / "t-local"
    driver.prepare_task_dir(task_dir)
    config = SandboxConfig(
        task_id="t-local", host_task_dir=task_dir, limits=SandboxLimits.resolve(settings), env={"EXTRA": "yes"}
    )
    created = await driver.create(config)
    yield created
    await created.close()


def shell(code: str, timeout: float = 30) -> ProcessRequest:
    return ProcessRequest(kind="shell", code=code, timeout=timeout)


async def test_a_shell_step_runs_in_the_host_task_directory(sandbox: Sandbox) -> None:
    seen: list[tuple[StreamName, str]] = []
    result = await sandbox.run(
        shell("pwd; echo $HOME; echo $CORRAL_TASK_ID $USER $EXTRA; echo oops >&2; exit 3"),
        lambda stream, data: seen.append((stream, data)),
    )
    host_dir = await asyncio.to_thread(os.path.realpath, sandbox.config.host_task_dir)
    assert result.exit_code == 3 and not result.ok
    assert result.stdout == f"{host_dir}\n{host_dir}\nt-local agent yes\n"
    assert result.stderr == "oops\n"
    assert "".join(d for s, d in seen if s == "stdout") == result.stdout
    python = await sandbox.run(ProcessRequest(kind="python", code="print(6 * 7)", timeout=30), lambda s, d: None)
    assert python.ok and python.stdout == "42\n"


async def test_files_are_read_and_written_with_the_executors_paths(sandbox: Sandbox) -> None:
    host_dir = Path(sandbox.config.host_task_dir)
    written = await sandbox.write_file("sub/a.txt", "hello", 1000)
    assert written == "/tasks/t-local/sub/a.txt"  # the path the sandbox's users know
    assert (host_dir / "sub" / "a.txt").read_text() == "hello"
    assert await sandbox.read_file("/tasks/t-local/sub/a.txt", 1000) == "hello"
    assert await sandbox.read_file("sub/a.txt", 1000) == "hello"
    with pytest.raises(FileRefused, match=r"'\.\.' is not allowed"):
        await sandbox.read_file("../x", 1000)
    with pytest.raises(FileRefused, match="larger than the read limit"):
        await sandbox.read_file("sub/a.txt", 2)


async def test_a_step_is_killed_on_cancel_and_by_its_timeout(sandbox: Sandbox) -> None:
    marker = f"{random.randrange(10**6, 10**7)}"
    started = asyncio.Event()

    def on_output(stream: StreamName, data: str) -> None:
        started.set()

    running = asyncio.create_task(sandbox.run(shell(f"echo go; sleep {marker}"), on_output))
    await asyncio.wait_for(started.wait(), 30)
    assert host_processes_matching(f"sleep {marker}")
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    for _ in range(200):  # the kill request is on its way; the agent stops the whole tree
        if not host_processes_matching(f"sleep {marker}"):
            break
        await asyncio.sleep(0.05)
    assert host_processes_matching(f"sleep {marker}") == []

    timed = await sandbox.run(shell("sleep 30", timeout=0.5), lambda s, d: None)
    assert timed.timed_out and not timed.ok
    after = await sandbox.run(shell("echo still here"), lambda s, d: None)
    assert after.ok and after.stdout == "still here\n"


async def test_closing_leaves_no_process_behind(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    driver = LocalDriver(settings)
    task_dir = settings.tasks_dir / "t-bg"
    driver.prepare_task_dir(task_dir)
    sandbox = await driver.create(
        SandboxConfig(task_id="t-bg", host_task_dir=task_dir, limits=SandboxLimits.resolve(settings))
    )
    marker = f"{random.randrange(10**6, 10**7)}"
    # Double-forked and in a session of its own: still below the agent (a child subreaper).
    result = await sandbox.run(
        shell(f"setsid sh -c 'nohup sleep {marker} >/dev/null 2>&1 &' & sleep 0.2; echo started"),
        lambda s, d: None,
    )
    assert result.stdout == "started\n"
    assert host_processes_matching(f"sleep {marker}")
    await sandbox.close()
    assert host_processes_matching(f"sleep {marker}") == []
    with pytest.raises(SandboxError):
        await sandbox.run(shell("true"), lambda s, d: None)


async def test_no_desktop_on_the_host(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    config = SandboxConfig(
        task_id="t-d", host_task_dir=tmp_path, limits=SandboxLimits.resolve(settings), desktop=True
    )
    with pytest.raises(SandboxError, match="runs no desktop"):
        await LocalDriver(settings).create(config)


def test_the_local_driver_is_not_a_setting(tmp_path: Path) -> None:
    # It isolates nothing: no configuration may make an executor run on it.
    from services.executor.server import make_driver

    with pytest.raises(SystemExit, match="unknown sandbox driver 'local'"):
        make_driver(Settings(data_dir=tmp_path, sandbox_driver="local"))
