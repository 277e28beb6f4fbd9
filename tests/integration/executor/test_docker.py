"""The docker driver only: hardening seen from inside a running container, the warm pool,
resource faults reported as such, and orphan cleanup after the executor is killed -9."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from harness import executor_tls_env, scheduler_channel

from corral.internal.v1 import executor_pb2, executor_pb2_grpc
from services.executor.drivers.docker import LABEL_EXECUTOR, LABEL_POOL, LABEL_TASK, docker_client

from .conftest import (
    GVISOR_NO_STATX,
    ExecutorClient,
    ExecutorFactory,
    free_port,
    gvisor_skip,
    host_processes_matching,
    require_docker,
    spec,
)

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parents[3]
CONTAINER_ID = "grep -o 'containers/[0-9a-f]*/hostname' /proc/self/mountinfo | cut -d/ -f2"


@pytest.fixture
def sandbox_driver() -> str:
    require_docker()
    return "docker"


def containers(executor_id: str, **labels: str) -> list[dict[str, Any]]:
    filters = [f"{LABEL_EXECUTOR}={executor_id}", *(f"{k}={v}" for k, v in labels.items())]
    return list(docker_client().api.containers(all=True, filters={"label": filters}))


async def wait_until(predicate: Any, what: str, attempts: int = 600) -> None:
    """Polls `predicate` (no assertion on time; the test's own timeout bounds it)."""
    for _ in range(attempts):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened: {what}")

# What gVisor does differently with the same cgroup limits (its Sentry is in the container's cgroup).
PIDS_ON_GVISOR = (
    "pids.max counts the Sentry's own threads, not the sandbox's processes: a fork bomb ends the "
    "whole sandbox instead of being refused a fork"
)
OOM_ON_GVISOR = "the memory limit is the whole sandbox's: an out-of-memory kill ends the container, not one process"


async def test_hardening_seen_from_inside(executor: ExecutorClient) -> None:
    gvisor_skip(executor.driver, GVISOR_NO_STATX + "; no CapAmb in /proc/self/status")
    task_id, outcome = await executor.run_steps(
        [
            {"tool": "shell", "command": "id -u; id -g"},
            {"tool": "shell", "command": "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status"},
            {"tool": "shell", "command": "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"},
            {"tool": "shell", "command": "touch /rootfile", "continue_on_error": True},
            {"tool": "shell", "command": "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max"},
            {"tool": "shell", "command": (
                "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; "
                "cat /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.swap.max"
            )},
            {"tool": "shell", "command": (
                "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us 2>/dev/null"
                " || cat /sys/fs/cgroup/cpu.max"
            )},
            {"tool": "shell", "command": "ls /var/run/docker.sock /run/docker.sock", "continue_on_error": True},
            {"tool": "shell", "command": "grep -E ' /tmp | /tasks/' /proc/self/mounts"},
            {"tool": "shell", "command": "pwd; ls /tasks; touch ok.txt && echo writable"},
        ],
        limits={"max_processes": 100, "memory_mb": 300},
    )
    out = [outcome.step(i).stdout for i in range(10)]
    assert out[0] == "1000\n1000\n"
    caps = dict(line.split(":\t") for line in out[1].splitlines())
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == caps["CapAmb"] == "0000000000000000"
    assert caps["NoNewPrivs"] == "1"
    assert out[2].split() == ["lo"]
    assert "Read-only file system" in outcome.step(3).stderr
    assert out[4] == "100\n"
    assert out[5].split() == [str(300 * 1024 * 1024)] * 2  # memory == memory+swap: no swap
    quota, period = out[6].split()
    assert int(quota) == int(period) * executor.settings.sandbox_cpus
    assert outcome.step_state(7) == "STEP_STATE_FAILED" and "No such file" in outcome.step(7).stderr
    tmp = next(line for line in out[8].splitlines() if " /tmp " in line)
    assert tmp.startswith("tmpfs /tmp ") and f"size={executor.settings.sandbox_tmp_size_mb * 1024}k" in tmp
    assert f" /tasks/{task_id} " in out[8]
    assert out[9] == f"/tasks/{task_id}\n{task_id}\nwritable\n"
    assert (executor.host_task_dir(task_id) / "ok.txt").exists()
    # Stopped when the task ended: not one process of its container is left (killed through
    # its init's pidfd; Docker notices by itself, and removes it in the background).
    budget = executor.executor.runner.driver.cgroups  # type: ignore[attr-defined]
    for container in containers(executor.executor.executor_id, **{LABEL_TASK: task_id}):
        own = [d / container["Id"] / "cgroup.procs" for d in budget.parent.dirs.values()] if budget else []
        assert all(not path.exists() or not path.read_text().strip() for path in own)
    await wait_until(
        lambda: all(c["State"] != "running" for c in containers(executor.executor.executor_id)), "docker saw it stop"
    )


async def test_warm_pool_hands_a_started_container_to_the_next_task(executor_factory: ExecutorFactory) -> None:
    gvisor_skip("docker", "its /proc/self/cgroup does not name the container; " + GVISOR_NO_STATX)
    executor = await executor_factory(docker_warm_pool=1, executor_id=f"warm-{uuid.uuid4().hex[:8]}")
    executor_id = executor.executor.executor_id
    pool = executor.executor.runner.driver.pool  # type: ignore[attr-defined]
    await wait_until(lambda: pool.ready_count == 1, "the pool filled")
    [warm] = containers(executor_id, **{LABEL_POOL: "warm"})

    task_id, outcome = await executor.run_steps(
        [
            {"tool": "shell", "command": CONTAINER_ID},
            {"tool": "shell", "command": "pwd; ls /tasks; echo hi > hi.txt"},
            {"tool": "read_file", "path": "hi.txt"},
        ]
    )
    assert outcome.state == "TASK_STATE_COMPLETED", outcome.finished
    assert outcome.step(0).stdout.strip() == warm["Id"]
    assert outcome.step(1).stdout == f"/tasks/{task_id}\n{task_id}\n"
    assert outcome.step(2).stdout == "hi\n"
    assert pool.claimed_total == 1
    # The task directory is back in its usual place, a real directory, with the journal in it.
    host_dir = executor.host_task_dir(task_id)
    assert host_dir.is_dir() and not host_dir.is_symlink()
    assert (host_dir / "hi.txt").read_text() == "hi\n"
    assert "task completed" in (host_dir / "agent.log").read_text()
    assert not list((executor.settings.tasks_dir / ".warm").glob(f"*/{task_id}"))

    # Refilled in the background with a new container, which the next task gets.
    await wait_until(lambda: pool.ready_count == 1, "the pool refilled")
    # The claimed one is removed in the background, a little after its task's end.
    await wait_until(lambda: len(containers(executor_id, **{LABEL_POOL: "warm"})) == 1, "the claimed one removed")
    [fresh] = containers(executor_id, **{LABEL_POOL: "warm"})
    assert fresh["Id"] != warm["Id"]
    second_id, second = await executor.run_steps([{"tool": "shell", "command": f"{CONTAINER_ID}; ls /tasks"}])
    assert second.step(0).stdout == f"{fresh['Id']}\n{second_id}\n"
    # A task asking for network (or other limits) gets a container of its own.
    _, networked = await executor.run_steps([{"tool": "shell", "command": CONTAINER_ID}], network=True)
    assert networked.step(0).stdout.strip() not in {warm["Id"], fresh["Id"]}
    assert pool.claimed_total == 2


async def test_a_sandboxs_output_is_logged_nowhere_on_the_host(executor_factory: ExecutorFactory) -> None:
    """The agent's channel is the container's attached stdout: Docker keeps no log of it (the
    json-file driver wrote every byte a step printed to the host's disk while the container
    lived, unbounded by the sandbox's disk quota)."""
    executor = await executor_factory(docker_warm_pool=1, executor_id=f"warm-{uuid.uuid4().hex[:8]}")
    pool = executor.executor.runner.driver.pool  # type: ignore[attr-defined]
    await wait_until(lambda: pool.ready_count == 1, "the pool filled")
    [warm] = pool._ready
    info = docker_client().api.inspect_container(warm.transport.container_id)
    assert info["HostConfig"]["LogConfig"]["Type"] == "none"
    assert not info["LogPath"]
    # The channel works all the same: a step's output of 1 MB comes through whole.
    _, outcome = await executor.run_steps([{"tool": "shell", "command": "head -c 1000000 /dev/zero | tr '\\0' x"}])
    assert outcome.step(0).stdout == "x" * 1_000_000


async def test_a_warm_task_leaves_no_writer_behind_when_it_finishes(executor_factory: ExecutorFactory) -> None:
    """The end of a warm task kills its container through its init's pidfd, not Docker's API:
    a writer it detached (own session, deaf to TERM and HUP) is gone by `finished`, and the task
    directory the client reads then (copied out of the slot's filesystem) never changes again."""
    executor = await executor_factory(docker_warm_pool=1, executor_id=f"warm-{uuid.uuid4().hex[:8]}")
    driver = executor.executor.runner.driver
    pool = driver.pool  # type: ignore[attr-defined]
    await wait_until(lambda: pool.ready_count == 1, "the pool filled")
    [warm] = pool._ready
    marker = f"{uuid.uuid4().int % 10**8}"
    writer = f"trap '' TERM HUP; while :; do echo {marker} >> tick; done"
    task_id, outcome = await executor.run_steps(
        [{"tool": "shell", "command": f"setsid sh -c \"{writer}\" >/dev/null 2>&1 & sleep 0.3; echo started"}]
    )
    assert outcome.step(0).stdout == "started\n" and pool.claimed_total == 1
    assert warm.transport._init is not None or not driver.kills_by_pid  # type: ignore[attr-defined]
    assert host_processes_matching(marker) == []
    tick = executor.host_task_dir(task_id) / "tick"
    assert not tick.parent.is_symlink()
    before = tick.read_bytes()
    assert before.startswith(f"{marker}\n".encode())
    await asyncio.sleep(0.3)  # a writer still running would have appended meanwhile
    assert tick.read_bytes() == before


async def test_disk_quota_names_the_limit(executor_factory: ExecutorFactory) -> None:
    executor = await executor_factory(sandbox_tmp_size_mb=32)
    _, outcome = await executor.run_steps(
        [
            {"tool": "shell", "command": "for i in 1 2 3; do head -c 20000000 /dev/zero > /tmp/f$i || exit 1; done",
             "continue_on_error": True},
            {"tool": "shell", "command": "rm /tmp/f*; echo still here"},
        ]
    )
    fill = outcome.step(0)
    assert "No space left on device" in fill.stderr
    assert fill.error == (
        "exited with code 1: no space left on device (the sandbox's /tmp is limited to 32 MiB, "
        f"each file to {executor.settings.sandbox_max_file_size_mb} MiB)"
    )
    assert outcome.step(1).stdout == "still here\n"


async def test_fork_bomb_leaves_the_sandbox_usable(executor: ExecutorClient) -> None:
    gvisor_skip(executor.driver, PIDS_ON_GVISOR)
    bomb = "while true; do sleep 600 & done"
    _, outcome = await executor.run_steps(
        [
            {"tool": "shell", "command": bomb, "timeout": 30, "continue_on_error": True},
            {"tool": "shell", "command": "ps -e --no-headers | wc -l"},
        ],
        limits={"max_processes": 40},
    )
    first = outcome.step(0)
    assert outcome.step_state(0) == "STEP_STATE_FAILED"
    assert "process limit reached (40 processes)" in first.error, (first.error, first.stderr[-300:])
    # The bomb's leftovers were killed: only init, the agent, this shell, ps and wc remain.
    assert int(outcome.step(1).stdout) <= 6


async def test_oom_of_one_sandbox_leaves_others_running(executor: ExecutorClient) -> None:
    gvisor_skip(executor.driver, OOM_ON_GVISOR)
    neighbour = executor.stub.RunTask(
        executor_pb2.RunTaskRequest(
            task_id=executor.new_task_id(),
            spec=spec([{"tool": "shell", "command": "echo up; sleep 3; echo done"}]),
        )
    )
    _, hog = await executor.run_steps(
        [{"tool": "python", "code": "x = []\nwhile True:\n    x.append(b'y' * 10_000_000)", "continue_on_error": True},
         {"tool": "shell", "command": "echo after"}],
        limits={"memory_mb": 128},
    )
    assert hog.step(0).error == "killed: out of memory: the sandbox's processes used more than its 128 MiB memory limit"
    assert hog.step(1).stdout == "after\n"
    events = [r.event async for r in neighbour]
    assert events[-1].finished.state == 3  # TASK_STATE_COMPLETED


async def test_orphans_are_removed_when_a_killed_executor_restarts(tmp_path: Path) -> None:
    executor_id = f"orphan-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {
        **os.environ,
        "CORRAL_DATA_DIR": str(tmp_path),
        "CORRAL_EXECUTOR_ADDRESS": f"127.0.0.1:{port}",
        "CORRAL_EXECUTOR_ID": executor_id,
        "CORRAL_SANDBOX_DRIVER": "docker",
        "CORRAL_DOCKER_WARM_POOL": "1",
        "CORRAL_SCHEDULER_ADDRESS": f"127.0.0.1:{free_port()}",
        "CORRAL_MEMORY_ADDRESS": f"127.0.0.1:{free_port()}",
        **executor_tls_env(tmp_path / "pki", executor_id),
    }

    async def start() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.executor", cwd=REPO, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )

    process = await start()
    try:
        async with scheduler_channel(tmp_path / "pki", f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 60)
            stub = executor_pb2_grpc.ExecutorServiceStub(channel)
            await wait_until(lambda: containers(executor_id, **{LABEL_POOL: "warm"}), "a warm container")
            call = stub.RunTask(
                executor_pb2.RunTaskRequest(task_id="t1", spec=spec([{"tool": "shell", "command": "echo up; sleep 600"}]))
            )
            async for response in call:
                if response.event.WhichOneof("event") == "output":
                    break
            process.send_signal(signal.SIGKILL)
            await process.wait()
            call.cancel()
        left = {c["Id"] for c in containers(executor_id)}
        assert left  # the task's container (and maybe a refilled warm one) outlived the executor

        process = await start()
        async with scheduler_channel(tmp_path / "pki", f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 60)
        assert not left & {c["Id"] for c in containers(executor_id)}
        # The task directory is back from its warm slot.
        task_dir = tmp_path / "tasks" / "t1"
        assert task_dir.is_dir() and not task_dir.is_symlink()
        assert "echo up" in (task_dir / "agent.log").read_text()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 60)
    assert not containers(executor_id)  # a clean stop removes its warm containers too
