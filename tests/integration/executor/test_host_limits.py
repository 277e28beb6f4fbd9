"""Limits that bound the host, not just one process: memory for a sandbox as a whole, and a pid
budget for all of an executor's sandboxes together (issue 8, point 5).

Before, bubblewrap's limits were per-process rlimits: three processes of 1.5 GiB each took
4.7 GB of host memory under a "2048 MiB" limit, and nothing bounded the sum of the sandboxes'
processes (eight tasks of max_processes 4096 exhaust 32768 pids). Sizes here are small (MiB,
tens of processes) so the tests are quick and harmless to the machine running them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from corral.config import Settings
from corral.internal.v1 import executor_pb2
from services.executor.cgroups import SANDBOX_PREFIX, ExecutorCgroups, make_executor_cgroups
from services.executor.drivers.bubblewrap import BubblewrapDriver

from .conftest import ExecutorClient, ExecutorFactory, TaskOutcome, make_settings, spec

# Three processes of 70 MiB each, held together: each fits a 160 MiB limit, their sum does not.
THREE_HOGS = (
    "pids=''; for i in 1 2 3; do "
    "python3 -c \"import time; block = b'x' * (70 << 20); print('holding', flush=True); time.sleep(2)\" & "
    'pids="$pids $!"; done; failed=0; for p in $pids; do wait $p || failed=1; done; exit $failed'
)
OOM_WORDS = "out of memory: the sandbox's processes used more than its 160 MiB memory limit"

# Forks `count` sleeping children, says how many it got, holds them until a file named
# `release` appears in its directory (when `hold`), then kills them; exits 1 if a fork failed.
FORK_AND_HOLD = """
import os, time
held = []
failed = False
try:
    for _ in range({count}):
        pid = os.fork()
        if pid == 0:
            time.sleep(120)
            os._exit(0)
        held.append(pid)
except OSError as exc:
    failed = True
    print("fork failed:", exc.strerror, flush=True)
print("held", len(held), flush=True)
open("held", "w").write(str(len(held)))
deadline = time.monotonic() + 60
while {hold} and not os.path.exists("release") and time.monotonic() < deadline:
    time.sleep(0.05)
for pid in held:
    os.kill(pid, 9)
raise SystemExit(1 if failed else 0)
"""


def held(stdout: str) -> int:
    return int(next(line for line in stdout.splitlines() if line.startswith("held ")).split()[1])


async def test_memory_limit_holds_for_the_sandbox_as_a_whole(executor: ExecutorClient) -> None:
    """Before (bubblewrap, RLIMIT_AS per process): all three lived, 210 MiB under "160 MiB"."""
    _, outcome = await executor.run_steps(
        [
            {"tool": "shell", "command": THREE_HOGS, "timeout": 30, "continue_on_error": True},
            {"tool": "shell", "command": "echo still here"},
        ],
        limits={"memory_mb": 160},
    )
    hogs = outcome.step(0)
    assert hogs.exit_code == 1, (hogs.exit_code, hogs.error, hogs.stderr[-300:])
    assert hogs.error == f"exited with code 1: a process was killed: {OOM_WORDS}"
    assert outcome.step(1).stdout == "still here\n"  # the sandbox (its agent) lived on


async def test_fork_bombs_in_several_sessions_are_bounded_by_the_sandbox(executor: ExecutorClient) -> None:
    """Endless fork loops in sessions of their own (not the step's process tree) count against
    the sandbox's one limit, and the step says it hit it. The count uses shell builtins only
    (a full process table refuses every fork)."""
    bombs = (
        "for t in 1 2 3; do setsid sh -c 'while :; do sleep 600 & done' >/dev/null 2>&1 & done; "
        # Counts until the bombs are at the limit (however slow a loaded machine makes them),
        # then 300 more rounds while their forks run into it.
        "most=0; k=0; extra=0; while [ $k -lt 20000 ] && [ $extra -lt 300 ]; do n=0; "
        "for d in /proc/[0-9]*; do n=$((n+1)); done; [ $n -gt $most ] && most=$n; "
        '[ $most -ge 38 ] && extra=$((extra+1)); k=$((k+1)); done; echo "most $most"; exit 3'
    )
    _, outcome = await executor.run_steps(
        [{"tool": "shell", "command": bombs, "timeout": 30}], limits={"max_processes": 40}
    )
    result = outcome.step(0)
    most = int(result.stdout.split()[1])
    assert 20 < most <= 40, result.stdout  # the agent and bwrap's init (or tini) included
    assert result.error == "exited with code 3: process limit reached (40 processes)", result.error
    _, after = await executor.run_steps([{"tool": "shell", "command": "echo next task"}])
    assert after.step(0).stdout == "next task\n"


async def test_the_executor_budget_bounds_its_sandboxes_together(executor_factory: ExecutorFactory) -> None:
    """Two sandboxes, each within its own max_processes, cannot together pass the executor's
    budget. Before: 35 + 35 processes under a 60-process budget."""
    executor = await executor_factory(executor_max_pids=60, bwrap_warm_pool=0, docker_warm_pool=0)
    status = await executor.stub.GetExecutorStatus(executor_pb2.GetExecutorStatusRequest())
    assert "executor budget 60 pids" in status.sandbox_limits, status.sandbox_limits

    holder_id = executor.new_task_id()
    holder = asyncio.create_task(
        executor.run(
            spec(
                [{"tool": "python", "code": FORK_AND_HOLD.format(count=35, hold=True), "timeout": 90}],
                limits={"max_processes": 40},
            ),
            task_id=holder_id,
        )
    )
    held_file = executor.host_task_dir(holder_id) / "held"
    await wait_for_file(held_file, holder)
    first = int(held_file.read_text())
    try:
        _, second = await executor.run_steps(
            [
                {
                    "tool": "python",
                    "code": FORK_AND_HOLD.format(count=35, hold=False),
                    "continue_on_error": True,
                }
            ],
            limits={"max_processes": 40},
        )
    finally:
        (executor.host_task_dir(holder_id) / "release").write_text("")
        await holder
    step = second.step(0)
    got = held(step.stdout) if "held " in step.stdout else 0
    assert first + got < 60, (first, got, step.stdout, step.error)
    assert first == 35  # the first sandbox's own limit was not what stopped it
    assert step.error == (
        "exited with code 1: the executor's process budget is used up (60 processes for all of its "
        "sandboxes together)"
    )


async def test_a_sandbox_that_cannot_start_for_the_budget_says_so(executor_factory: ExecutorFactory) -> None:
    """One sandbox takes the whole budget; the next one's start fails naming the budget (before:
    a bare 'bwrap: Creating new namespace failed' or runc's 'can't get final child's PID')."""
    executor = await executor_factory(executor_max_pids=30, bwrap_warm_pool=0, docker_warm_pool=0)
    holder_id = executor.new_task_id()
    holder = asyncio.create_task(
        executor.run(
            spec(
                [{"tool": "python", "code": FORK_AND_HOLD.format(count=40, hold=True), "timeout": 90}],
                limits={"max_processes": 40},
            ),
            task_id=holder_id,
        )
    )
    await wait_for_file(executor.host_task_dir(holder_id) / "held", holder)
    try:
        _, second = await executor.run_steps([{"tool": "shell", "command": "echo started"}])
    finally:
        (executor.host_task_dir(holder_id) / "release").write_text("")
        _, first = await holder
    budget_words = "the executor's process budget is used up (30 processes for all of its sandboxes together)"
    assert second.state == "TASK_STATE_FAILED"
    assert budget_words in second.finished.error, second.finished.error
    assert first.step(0).error == f"exited with code 1: {budget_words}"


def has_text(path: Path) -> bool:
    return path.is_file() and bool(path.read_text())


async def wait_for_file(path: Path, task: asyncio.Task[tuple[str, TaskOutcome]]) -> None:
    """Polls for a file a sandbox writes (bounded by attempts; no assertion on time)."""
    for _ in range(1200):
        if has_text(path):
            return
        assert not task.done(), task.result()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path.name} never appeared")


# --- bubblewrap's cgroups themselves -------------------------------------------------------------


def cgroups_of(executor: ExecutorClient) -> ExecutorCgroups:
    driver = executor.executor.runner.driver
    assert isinstance(driver, BubblewrapDriver)
    assert driver.cgroups is not None, driver.limits_description
    return driver.cgroups


def sandbox_cgroups(cgroups: ExecutorCgroups) -> set[str]:
    return {
        p.name
        for d in cgroups.parent.paths
        for p in d.iterdir()
        if p.is_dir() and p.name.startswith(SANDBOX_PREFIX)
    }


@pytest.mark.parametrize("sandbox_driver", ["bubblewrap"])
async def test_cgroups_are_removed_with_their_sandboxes_and_at_start(
    executor_factory: ExecutorFactory, tmp_path: Path, sandbox_driver: str
) -> None:
    executor_id = f"cgroup-test-{os.getpid()}-{os.urandom(3).hex()}"
    # A crashed run of this executor left a sandbox's cgroup, with a process in it.
    settings = make_settings(tmp_path / "crashed")
    crashed, _ = make_executor_cgroups(settings, executor_id)
    assert crashed is not None
    stale = crashed.sandbox(64, 8)
    leftover = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", 'echo $$ > "$1" && echo $$ > "$2" && exec sleep 600', "x", *stale.procs_files
    )

    executor = await executor_factory(executor_id=executor_id, bwrap_warm_pool=0)
    cgroups = cgroups_of(executor)
    assert await asyncio.wait_for(leftover.wait(), 10) == -9  # killed: it was a stale sandbox's
    assert sandbox_cgroups(cgroups) == set()

    _, outcome = await executor.run_steps(
        [{"tool": "shell", "command": "cat /proc/self/cgroup; sleep 600 & echo background"}]
    )
    assert outcome.state == "TASK_STATE_COMPLETED", outcome.finished
    # Its own cgroup namespace, rooted at its cgroup: no host cgroup path shows.
    lines = outcome.step(0).stdout.splitlines()
    assert lines[-1] == "background" and all(line.endswith(":/") for line in lines[:-1]), lines
    # The task ended: its sandbox, the background sleep included, and its cgroup are gone.
    assert sandbox_cgroups(cgroups) == set()

    await executor.executor.stop(grace=1)
    assert not any(path.exists() for path in cgroups.parent.paths)


@pytest.mark.parametrize("sandbox_driver", ["bubblewrap"])
async def test_a_claimed_warm_sandbox_takes_its_tasks_limits(
    executor_factory: ExecutorFactory, sandbox_driver: str
) -> None:
    """Warm sandboxes start with the default limits (2048 MiB); the task's own hold."""
    executor = await executor_factory(bwrap_warm_pool=1)
    driver = executor.executor.runner.driver
    assert isinstance(driver, BubblewrapDriver)
    for _ in range(600):
        if driver.pool.ready_count == 1:
            break
        await asyncio.sleep(0.05)
    [warm] = list(driver.pool._ready)
    _, outcome = await executor.run_steps(
        [
            {"tool": "shell", "command": THREE_HOGS, "timeout": 30, "continue_on_error": True},
            {
                "tool": "shell",
                "command": "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max",
            },
        ],
        limits={"memory_mb": 160, "max_processes": 50},
    )
    assert driver.pool.claimed_total == 1 and warm.claimed
    # The kernel picks the victim inside the sandbox's cgroup: a hog (the shell then exits 1) or,
    # now and then, the step's shell itself; either way the task's 160 MiB held, and says so.
    assert outcome.step(0).error in (
        f"exited with code 1: a process was killed: {OOM_WORDS}", f"killed: {OOM_WORDS}"
    ), outcome.step(0).error
    assert outcome.step(1).stdout == "50\n"


def test_without_a_writable_cgroup_the_fallback_is_reported() -> None:
    """A user that cannot write the cgroup hierarchy (a laptop without delegation) falls back
    to rlimits, saying so; checked in a child that dropped root."""
    data_dir = Path(tempfile.mkdtemp(prefix="corral-unprivileged-"))  # reachable by nobody
    os.chown(data_dir, 65534, 65534)
    settings = make_settings(data_dir, executor_id="unprivileged", bwrap_warm_pool=0)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no root, then the bubblewrap driver's start
        try:
            os.close(read)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            driver = BubblewrapDriver(settings)
            asyncio.run(driver.start("unprivileged"))
            os.write(write, f"{driver.cgroups is None}|{driver.limits_description}".encode())
        except BaseException as exc:
            os.write(write, f"error|{type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        answer = f.read()
    os.waitpid(pid, 0)
    shutil.rmtree(data_dir)
    none, words = answer.split("|", 1)
    assert none == "True", answer
    assert words.startswith("per-process rlimits only"), words
    assert "Permission denied" in words or "Read-only" in words, words
    # Nor can it give sandboxes network of their own: it says so, and such tasks fail.
    assert "network: unavailable, tasks asking for it fail" in words and "not root" in words, words

    off = make_executor_cgroups(Settings(sandbox_cgroups=False), "off")
    assert off == (None, "sandbox cgroups are turned off (CORRAL_SANDBOX_CGROUPS=false)")
