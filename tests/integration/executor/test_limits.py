"""Process, memory, file-size, disk and output limits."""

from __future__ import annotations

from .conftest import ExecutorClient, ExecutorFactory

FORK_BOMB = """
import os, time
children = 0
try:
    for _ in range(2000):
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        children += 1
except OSError as exc:
    print(f"fork failed after {children} children: {exc}", flush=True)
    raise
"""


async def test_fork_bomb_is_stopped_and_executor_keeps_working(executor: ExecutorClient) -> None:
    _, outcome = await executor.run_steps(
        [
            {"tool": "python", "code": FORK_BOMB, "timeout": 20, "continue_on_error": True},
            {"tool": "shell", "command": "echo still here"},
        ],
        limits={"max_processes": 64},
    )
    bomb = outcome.step(0)
    assert bomb.stdout.startswith("fork failed after")
    assert int(bomb.stdout.split()[3]) < 64
    assert "process limit reached (64 processes)" in bomb.error
    assert outcome.step(1).stdout == "still here\n"
    _, after = await executor.run_steps([{"tool": "shell", "command": "echo next task"}])
    assert after.step(0).stdout == "next task\n"


async def test_memory_hog_fails(executor: ExecutorClient) -> None:
    _, outcome = await executor.run_steps(
        # Touches every page, so a cgroup limit (not only an address-space limit) sees it.
        [{"tool": "python", "code": "block = b'x' * (1024 * 1024 * 1024)\nprint('allocated')"}],
        limits={"memory_mb": 256},
    )
    result = outcome.step(0)
    assert outcome.state == "TASK_STATE_FAILED"
    assert "allocated" not in result.stdout
    # The sandbox's memory cgroup (both drivers): the kernel OOM-kills the process.
    assert result.error == "killed: out of memory: the sandbox's processes used more than its 256 MiB memory limit"
    assert result.exit_code == -9


async def test_file_size_limit_names_the_limit(executor: ExecutorClient) -> None:
    _, outcome = await executor.run_steps(
        [
            {"tool": "shell", "command": "head -c 3000000 /dev/zero > big.bin", "continue_on_error": True},
            {"tool": "python", "code": "open('big2.bin', 'wb').write(b'x' * 3_000_000)"},
        ],
        limits={"max_file_size_mb": 1},
    )
    # The shell reports its child's SIGXFSZ death as 128 + 25.
    assert "exceeding the file size limit (1 MiB)" in outcome.step(0).error
    assert outcome.step(0).exit_code == 153
    _, direct = await executor.run_steps(
        [{"tool": "shell", "command": "exec head -c 3000000 /dev/zero > big.bin"}],
        limits={"max_file_size_mb": 1},
    )
    assert direct.step(0).error == "killed: exceeded the file size limit (1 MiB)"
    assert direct.step(0).exit_code == -25  # SIGXFSZ
    assert "exceeded the file size limit (1 MiB)" in outcome.step(1).error
    assert "File too large" in outcome.step(1).stderr


async def test_output_is_truncated_and_flagged(executor: ExecutorClient) -> None:
    _, outcome = await executor.run_steps(
        [{"tool": "shell", "command": "head -c 5000 /dev/zero | tr '\\0' a; echo small >&2"}],
        limits={"max_output_bytes": 1024},
    )
    result = outcome.step(0)
    assert outcome.state == "TASK_STATE_COMPLETED"
    assert result.stdout == "a" * 1024 and result.stdout_truncated
    assert result.stderr == "small\n" and not result.stderr_truncated


# Writes 4 MiB files, one every 50 ms, for far longer than any test waits.
DISK_FILLER = "i=0; while [ $i -lt 2000 ]; do head -c 4194304 /dev/urandom > fill$i; i=$((i+1)); sleep 0.05; done"


async def test_task_directory_disk_quota_stops_the_step(executor_factory: ExecutorFactory) -> None:
    executor = await executor_factory(disk_check_interval_seconds=0.2)
    _, outcome = await executor.run_steps(
        [
            {"tool": "shell", "command": DISK_FILLER, "timeout": 60, "continue_on_error": True},
            {"tool": "shell", "command": "rm -f fill*; echo cleaned up"},
            {"tool": "shell", "command": "head -c 1048576 /dev/zero > small && echo fits"},
        ],
        limits={"disk_mb": 24},
    )
    filler = outcome.step(0)
    assert outcome.step_state(0) == "STEP_STATE_FAILED"
    # Kernel-enforced ("is full (its 24 MiB are used)") or measured ("holds more than its 24 MiB").
    assert filler.error.startswith("disk quota exceeded: the task directory "), filler.error
    assert "its 24 MiB" in filler.error
    assert not filler.timed_out
    # Stopped, the task goes on (continue_on_error) and can clean up; under quota, steps run.
    assert outcome.step(1).stdout == "cleaned up\n"
    assert outcome.step(2).stdout == "fits\n"
    assert outcome.state == "TASK_STATE_COMPLETED"


async def test_task_directory_file_count_is_limited(executor_factory: ExecutorFactory) -> None:
    executor = await executor_factory(disk_check_interval_seconds=0.2, sandbox_max_files=200)
    _, outcome = await executor.run_steps(
        [{"tool": "shell", "command": "mkdir many; cd many; i=0; while true; do : > f$i; i=$((i+1)); done"}]
    )
    assert outcome.state == "TASK_STATE_FAILED"
    assert outcome.step(0).error in {
        "disk quota exceeded: the task directory holds its limit of 200 files",  # its own filesystem
        "disk quota exceeded: the task directory holds more than 200 files",  # measured
    }


async def test_no_unsized_memory_is_writable(executor: ExecutorClient) -> None:
    """Every filesystem a step can write outside its task directory is sized: / and /dev are
    read-only, /dev/shm holds 64 MiB. Before, bubblewrap's / and /dev were writable tmpfs as
    large as half the host's memory (a step put 1.8 GB into /dev/shm)."""
    _, outcome = await executor.run_steps([
        {"tool": "shell", "command": "touch /x", "continue_on_error": True},
        {"tool": "shell", "command": "touch /dev/x", "continue_on_error": True},
        {"tool": "shell", "command": "dd if=/dev/zero of=/dev/shm/big bs=1M count=100", "continue_on_error": True},
        {"tool": "shell", "command": "rm /dev/shm/big && dd if=/dev/zero of=/dev/shm/small bs=1M count=8 && echo fits"},
        {"tool": "shell", "command": "echo fine > /dev/null && echo devices-work"},
    ])
    assert outcome.step(0).exit_code != 0 and "/x" in outcome.step(0).stderr
    assert outcome.step(1).exit_code != 0 and "/dev/x" in outcome.step(1).stderr
    assert outcome.step(2).exit_code != 0 and "No space left on device" in outcome.step(2).stderr
    assert outcome.step(3).stdout.endswith("fits\n")
    assert outcome.step(4).stdout == "devices-work\n"
