"""The bubblewrap driver's warm pool: pre-started sandboxes claimed by tasks, as isolated as cold ones.

A sandbox is recognised by its pid namespace: a step's `readlink /proc/self/ns/pid` names the
same namespace as the host's view of the sandbox's init.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import pytest

from services.executor.drivers.bubblewrap import BubblewrapDriver, BubblewrapSandbox
from services.executor.drivers.warm_pool import WARM_DIR, WarmPool, restore_warm_dirs

from .conftest import ExecutorClient, ExecutorFactory, host_processes_matching

PID_NS = "readlink /proc/self/ns/pid"


@pytest.fixture
def sandbox_driver() -> str:
    return "bubblewrap"


def pool_of(executor: ExecutorClient) -> WarmPool[BubblewrapSandbox]:
    driver = executor.executor.runner.driver
    assert isinstance(driver, BubblewrapDriver)
    return driver.pool


def ready_sandboxes(executor: ExecutorClient) -> list[BubblewrapSandbox]:
    return list(pool_of(executor)._ready)


def pid_namespace(sandbox: BubblewrapSandbox) -> str:
    assert sandbox.transport.child_pid is not None
    return os.readlink(f"/proc/{sandbox.transport.child_pid}/ns/pid")


async def wait_until(predicate: Any, what: str, attempts: int = 600) -> None:
    """Polls `predicate` (no assertion on time; the test's own timeout bounds it)."""
    for _ in range(attempts):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def warm_executor(executor_factory: ExecutorFactory, size: int = 1) -> ExecutorClient:
    executor = await executor_factory(bwrap_warm_pool=size)
    pool = pool_of(executor)
    await wait_until(lambda: pool.ready_count == size, "the pool filled")
    return executor


async def test_a_task_runs_in_a_warm_sandbox_and_the_pool_refills(executor_factory: ExecutorFactory) -> None:
    executor = await warm_executor(executor_factory)
    pool = pool_of(executor)
    [warm] = ready_sandboxes(executor)
    warm_ns = pid_namespace(warm)
    slot = warm.warm_slot
    assert slot is not None and slot.is_dir()

    task_id, outcome = await executor.run_steps(
        [
            {"tool": "shell", "command": PID_NS},
            {"tool": "shell", "command": "pwd; echo $HOME; echo $CORRAL_TASK_ID $CORRAL_TASK_DIR; ls -a /tasks"},
            {"tool": "shell", "command": "echo hi > hi.txt; stat -c '%u %a' /tasks"},
            {"tool": "read_file", "path": "hi.txt"},
            {"tool": "python", "code": "import os; print(os.getcwd())"},
            {"tool": "shell", "command": "echo left-behind > /tmp/marker"},
        ]
    )
    assert outcome.state == "TASK_STATE_COMPLETED", outcome.finished
    assert outcome.step(0).stdout.strip() == warm_ns  # the first step ran in the pre-started sandbox
    assert outcome.step(1).stdout == (
        f"/tasks/{task_id}\n/tasks/{task_id}\n{task_id} /tasks/{task_id}\n.\n..\n{task_id}\n"
    )
    assert outcome.step(2).stdout == "1000 700\n"  # /tasks as in a cold sandbox
    assert outcome.step(3).stdout == "hi\n"
    assert outcome.step(4).stdout == f"/tasks/{task_id}\n"
    assert pool.claimed_total == 1

    # Ended with its task; the task directory is back in place, the slot is gone.
    assert warm.transport.process is not None and warm.transport.process.returncode is not None
    host_dir = executor.host_task_dir(task_id)
    assert host_dir.is_dir() and not host_dir.is_symlink()
    assert (host_dir / "hi.txt").read_text() == "hi\n"
    assert "task completed" in (host_dir / "agent.log").read_text()
    await wait_until(lambda: not slot.exists(), "the slot went")  # (discarded after the task's end)

    # Refilled in the background; the next task gets the new sandbox and sees only itself.
    await wait_until(lambda: pool.ready_count == 1, "the pool refilled")
    [fresh] = ready_sandboxes(executor)
    fresh_ns = pid_namespace(fresh)
    # Not compared by namespace: the kernel may give the ended sandbox's namespace inode to the new one.
    assert fresh is not warm and pool.started_total == 2
    second_id, second = await executor.run_steps(
        [{"tool": "shell", "command": f"{PID_NS}; ls /tasks; cat /tmp/marker 2>&1 || true"}]
    )
    assert second.step(0).stdout.splitlines()[:2] == [fresh_ns, second_id]
    assert "left-behind" not in second.step(0).stdout  # nothing of the first task's sandbox remains
    assert pool.claimed_total == 2


async def test_tasks_the_pool_does_not_fit_get_a_cold_sandbox(executor_factory: ExecutorFactory) -> None:
    executor = await warm_executor(executor_factory)
    pool = pool_of(executor)
    [warm] = ready_sandboxes(executor)
    warm_ns = pid_namespace(warm)
    _, networked = await executor.run_steps(
        [{"tool": "python", "code": (
            "import os, socket\n"
            "print(os.readlink('/proc/self/ns/pid'))\n"
            "print(sorted(n for _, n in socket.if_nameindex()) != ['lo'])\n"
        )}],
        network=True,
    )
    assert networked.state == "TASK_STATE_COMPLETED", networked.finished
    ns, more_than_lo = networked.step(0).stdout.splitlines()
    assert ns != warm_ns and more_than_lo == "True"  # its own sandbox, with the host's network
    assert pool.claimed_total == 0 and ready_sandboxes(executor) == [warm]

    # Limits are per process under bubblewrap: a task with its own limits still gets a warm one.
    _, limited = await executor.run_steps([{"tool": "shell", "command": PID_NS}], limits={"max_processes": 50})
    assert limited.step(0).stdout.strip() == warm_ns


async def test_isolation_in_a_warm_sandbox(executor_factory: ExecutorFactory) -> None:
    executor = await warm_executor(executor_factory)
    other = executor.settings.tasks_dir / "other-task"
    other.mkdir(parents=True)
    (other / "secret.txt").write_text("top secret")
    [warm] = ready_sandboxes(executor)
    warm_ns = pid_namespace(warm)
    marker = f"{random.randrange(10**6, 10**7)}"
    task_id, outcome = await executor.run_steps(
        [
            {"tool": "shell", "command": f"{PID_NS}; id -u; id -g; hostname"},
            {"tool": "shell", "command": "ls /tasks"},
            {"tool": "shell", "command": "cat /tasks/other-task/secret.txt", "continue_on_error": True},
            {"tool": "shell", "command": "cat /etc/shadow", "continue_on_error": True},
            {"tool": "shell", "command": "ls /root", "continue_on_error": True},
            {"tool": "shell", "command": "ps -eo pid,args --no-headers"},
            {"tool": "shell", "command": "touch /usr/x /etc/x", "continue_on_error": True},
            {"tool": "shell", "command": f"cat {other}/secret.txt", "continue_on_error": True},
            {"tool": "shell", "command": f"ls {executor.settings.tasks_dir / WARM_DIR}", "continue_on_error": True},
            {"tool": "python", "code": "import socket; print(sorted(n for _, n in socket.if_nameindex()))"},
            {"tool": "shell", "command": f"nohup sleep {marker} >/dev/null 2>&1 & echo started"},
        ]
    )
    out = [outcome.step(i).stdout for i in range(len(outcome.steps))]
    assert out[0] == f"{warm_ns}\n1000\n1000\nsandbox\n"
    assert out[1] == f"{task_id}\n"
    for index in (2, 3, 4, 6, 7, 8):
        assert outcome.step(index).exit_code != 0, index
    assert "Permission denied" in outcome.step(3).stderr
    processes = out[5].strip().splitlines()
    assert len(processes) <= 5, processes
    assert processes[0].split()[0] == "1" and "bwrap" in processes[0]
    assert "Read-only file system" in outcome.step(6).stderr
    assert out[9] == "['lo']\n"
    assert out[10] == "started\n"
    assert host_processes_matching(f"sleep {marker}") == []  # killed with the sandbox


async def test_stopping_the_driver_closes_the_pool(executor_factory: ExecutorFactory) -> None:
    executor = await warm_executor(executor_factory, size=2)
    sandboxes = ready_sandboxes(executor)
    assert len(sandboxes) == 2
    await executor.executor.runner.driver.stop()
    for sandbox in sandboxes:
        transport = sandbox.transport
        assert transport.process is not None and transport.process.returncode is not None
        assert transport.child_pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(transport.child_pid, 0)
    warm_dir = executor.settings.tasks_dir / WARM_DIR
    assert not warm_dir.exists() or list(warm_dir.iterdir()) == []


async def test_a_disabled_pool_starts_nothing(executor_factory: ExecutorFactory) -> None:
    executor = await executor_factory(bwrap_warm_pool=0)
    _, outcome = await executor.run_steps([{"tool": "shell", "command": "echo x"}])
    assert outcome.step(0).stdout == "x\n"
    pool = pool_of(executor)
    assert pool.started_total == pool.claimed_total == pool.ready_count == 0


def test_restore_warm_dirs_after_a_crash(tmp_path: Any) -> None:
    tasks = tmp_path / "tasks"
    slot = tasks / WARM_DIR / "abc"
    (slot / "t1").mkdir(parents=True)
    (slot / "t1" / "agent.log").write_text("log")
    (slot / "left-by-a-step").mkdir()
    (tasks / "t1").symlink_to(os.path.relpath(slot / "t1", tasks))
    restore_warm_dirs(tasks)
    assert (tasks / "t1").is_dir() and not (tasks / "t1").is_symlink()
    assert (tasks / "t1" / "agent.log").read_text() == "log"
    assert not (tasks / "left-by-a-step").exists()
    assert list((tasks / WARM_DIR).iterdir()) == []
