"""The disk boundary (issue 8, points 4-5): each sandbox's writable directory is a filesystem of
its own (services/executor/task_fs.py), so the kernel bounds it, and what a sandbox leaves
there is inert on the host. Attacks from inside, on both drivers.

Before (a bind-mounted host directory, measured while steps ran): 1000 MiB held in unlinked
files under a 100 MiB quota; 300 MiB written by an idle long-lived sandbox under 50 MiB; a
warm-pool task renamed its directory away, left a symlink and wrote 1001 MiB that stayed on
the host; a setuid file made inside ran as its owner for any host user; mountinfo named the
data directory's host path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from corral.internal.v1 import executor_pb2
from corral.v1 import sandbox_pb2, task_pb2
from services.executor import task_fs
from services.executor.server import start_executor
from services.executor.task_fs import TaskFilesystems, loop_mounts_under

from .conftest import ExecutorClient, ExecutorFactory, spec

MIB = 1024 * 1024
QUOTA_MB = 30
# What a filesystem of QUOTA_MB may hold beyond it (ext4's rounding, task_fs.image_mib).
SLACK_MB = 3
OTHER_UID = 4242


def own_filesystems(executor: ExecutorClient) -> TaskFilesystems:
    filesystems = executor.executor.runner.driver.task_fs
    assert filesystems is not None
    if not filesystems.enabled:
        pytest.skip(f"no per-sandbox filesystems here: {filesystems.unavailable}")
    return filesystems


async def wait_for(predicate: Any, what: str, attempts: int = 400) -> None:
    """Polls `predicate` (no assertion on time; the test's own timeout bounds it)."""
    for _ in range(attempts):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def is_mount(path: Path) -> bool:
    return os.path.ismount(path)


def is_gone(path: Path) -> bool:
    return not os.path.ismount(path) and not os.path.lexists(path)


def loop_devices_of(data_dir: Path) -> list[str]:
    """Loop devices whose image lies in `data_dir` (sysfs), mounted or not."""
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if backing.read_text().strip().startswith(f"{data_dir}/"):
                found.append(backing.parts[3])
    return found


def allocated_bytes(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


# Holds a file it unlinked right away and writes into it until told no (ENOSPC) or 80 MiB;
# tells how far it got in /tmp/held, then keeps the file open.
HOLD_UNLINKED = """
import os, time
f = open('hidden', 'wb'); os.unlink('hidden')
n = 0
try:
    while n < 80 * 2**20:
        f.write(b'x' * 2**20); f.flush(); os.fsync(f.fileno()); n += 2**20
except OSError:
    pass
open('/tmp/held', 'w').write(str(n))
time.sleep(120)
"""


async def test_unlinked_but_open_files_count(executor_factory: ExecutorFactory) -> None:
    executor = await executor_factory()
    own_filesystems(executor)
    _, outcome = await executor.run_steps(
        [
            {"tool": "shell", "command": f'nohup python3 -c "{HOLD_UNLINKED}" >/dev/null 2>&1 &'},
            {
                "tool": "shell",
                "command": "for i in $(seq 200); do [ -e /tmp/held ] && break; sleep 0.1; done; cat /tmp/held",
            },
            {"tool": "shell", "command": "head -c 8388608 /dev/zero > more && echo wrote"},
        ],
        limits={"disk_mb": QUOTA_MB},
    )
    held = int(outcome.step(1).stdout)
    assert held <= (QUOTA_MB + SLACK_MB) * MIB, held  # before: all 80 MiB
    assert outcome.step_state(2) == "STEP_STATE_FAILED"
    assert "wrote" not in outcome.step(2).stdout
    assert outcome.step(2).error.startswith("disk quota exceeded: the task directory is full"), outcome.step(
        2
    ).error


async def create_sandbox(executor: ExecutorClient, disk_mb: int) -> str:
    sandbox_id = f"sbx-{os.urandom(4).hex()}"
    expires = Timestamp()
    expires.FromSeconds(int(time.time()) + 600)
    await executor.stub.CreateSandbox(
        executor_pb2.CreateSandboxRequest(
            sandbox_id=sandbox_id,
            spec=sandbox_pb2.SandboxSpec(limits=task_pb2.Limits(disk_mb=disk_mb)),
            expires_at=expires,
        )
    )
    return sandbox_id


# Started by a task that then ends: writes 2 MiB files into /tasks while the sandbox is idle,
# up to 80 MiB or until told no; then frees one and says how many it wrote.
IDLE_FILLER = (
    "nohup sh -c 'sleep 0.3; i=0; while [ $i -lt 40 ]; do head -c 2097152 /dev/zero > /tasks/fill$i || break; "
    "i=$((i+1)); done; rm -f /tasks/fill0; echo $i > /tasks/filled' >/dev/null 2>&1 &"
)


async def test_an_idle_long_lived_sandbox_is_bounded(executor_factory: ExecutorFactory) -> None:
    executor = await executor_factory()
    own_filesystems(executor)
    sandbox_id = await create_sandbox(executor, QUOTA_MB)
    managed = executor.executor.runner.sandboxes.get(sandbox_id)
    assert is_mount(managed.host_tasks_dir)
    _, started = await executor.run(spec([{"tool": "shell", "command": IDLE_FILLER}], sandbox_id=sandbox_id))
    assert started.state == "TASK_STATE_COMPLETED"
    filled = managed.host_tasks_dir / "filled"
    await wait_for(filled.exists, "the idle writer stopped")
    written_mb = 2 * int(filled.read_text())
    assert written_mb <= QUOTA_MB + SLACK_MB, written_mb  # before: all 80 MiB
    # The sandbox itself is fine: a task there can clean up and go on.
    _, after = await executor.run(
        spec([{"tool": "shell", "command": "rm -f /tasks/fill*; echo ok"}], sandbox_id=sandbox_id)
    )
    assert after.step(0).stdout == "ok\n"


async def test_an_idle_sandbox_over_its_measured_quota_is_deleted(executor_factory: ExecutorFactory) -> None:
    """Without filesystems of their own (here: turned off) idle sandboxes are measured too."""
    executor = await executor_factory(sandbox_disk_fs=False)
    sandboxes = executor.executor.runner.sandboxes
    sandbox_id = await create_sandbox(executor, QUOTA_MB)
    task_id, started = await executor.run(
        spec([{"tool": "shell", "command": IDLE_FILLER}], sandbox_id=sandbox_id)
    )
    assert started.state == "TASK_STATE_COMPLETED"
    log_text = (
        executor.settings.data_dir / "sandboxes" / sandbox_id / "tasks" / task_id / "agent.log"
    ).read_text()
    assert (
        "disk quota: measured every 0.5s, not enforced by the kernel (CORRAL_SANDBOX_DISK_FS is off)"
        in log_text
    )
    await wait_for(lambda: sandbox_id not in sandboxes.sandbox_ids, "the sandbox was deleted", attempts=600)
    _, later = await executor.run(spec([{"tool": "shell", "command": "true"}], sandbox_id=sandbox_id))
    assert later.state == "TASK_STATE_FAILED"
    assert (
        "deleted while idle: disk quota exceeded: the task directory holds more than its 30 MiB"
        in later.finished.error
    )


def warm_pool_settings(driver: str) -> dict[str, Any]:
    pool = "bwrap_warm_pool" if driver == "bubblewrap" else "docker_warm_pool"
    return {pool: 1, "sandbox_disk_mb": QUOTA_MB}


async def test_a_warm_task_cannot_rename_its_directory_out_of_its_quota(
    executor_factory: ExecutorFactory, sandbox_driver: str
) -> None:
    executor = await executor_factory(**warm_pool_settings(sandbox_driver))
    own_filesystems(executor)
    pool = executor.executor.runner.driver.pool  # type: ignore[attr-defined]
    await wait_for(lambda: pool.ready_count == 1, "the pool filled")
    task_id, outcome = await executor.run_steps(
        [
            {
                "tool": "shell",
                "command": 'cd /tasks && mv "$CORRAL_TASK_ID" away && ln -s away "$CORRAL_TASK_ID"',
                "continue_on_error": True,
            },
            {
                "tool": "shell",
                "command": "D=/tasks/away; [ -d $D ] || D=.; head -c 83886080 /dev/zero > $D/big",
                "continue_on_error": True,
            },
            {"tool": "shell", "command": "du -sm /tasks | cut -f1"},
        ]
    )
    assert pool.claimed_total == 1  # it ran in the warm sandbox
    if sandbox_driver == "bubblewrap":  # the slot (/tasks) is the sandbox user's
        assert outcome.step_state(0) == "STEP_STATE_COMPLETED", outcome.step(0).stderr
    else:  # docker's slot belongs to root
        assert "Permission denied" in outcome.step(0).stderr
    assert outcome.step(1).error.startswith("disk quota exceeded: the task directory is full"), outcome.step(
        1
    ).error
    assert int(outcome.step(2).stdout) <= QUOTA_MB + SLACK_MB  # before: 1001 MiB
    # Nothing of it stays on the host: the slot went, the task's directory is an empty one.
    task_dir = executor.host_task_dir(task_id)
    assert task_dir.is_dir() and not task_dir.is_symlink()
    assert allocated_bytes(executor.settings.tasks_dir) < MIB


SETUID_COPY = "cp /usr/bin/id ./myid && chmod 6755 ./myid && stat -c '%a' myid"


def run_as_other_user(path: Path) -> str:
    """Runs `path -u` as an unprivileged host user that owns nothing here; its effective uid.
    Through a descriptor: that user could not search the test's temporary directories."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        argv = [
            "setpriv",
            f"--reuid={OTHER_UID}",
            f"--regid={OTHER_UID}",
            "--clear-groups",
            "--",
            f"/proc/self/fd/{fd}",
            "-u",
        ]
        os.set_inheritable(fd, True)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, pass_fds=(fd,))
    finally:
        os.close(fd)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


async def test_a_setuid_file_made_inside_is_inert_on_the_host(executor_factory: ExecutorFactory) -> None:
    # The syscall filter refuses to make set-id files (test_seccomp.py); this is the layer
    # beneath it, the nosuid filesystem and the copy-out, so the filter is off here.
    executor = await executor_factory(sandbox_seccomp=False)
    own_filesystems(executor)
    task_id = executor.new_task_id()
    running = asyncio.ensure_future(
        executor.run(
            spec(
                [
                    {"tool": "shell", "command": SETUID_COPY},
                    {
                        "tool": "shell",
                        "command": "for i in $(seq 600); do [ -e go ] && break; sleep 0.05; done; echo went",
                    },
                ]
            ),
            task_id=task_id,
        )
    )
    copy = executor.host_task_dir(task_id) / "myid"
    await wait_for(copy.exists, "the sandbox made its setuid copy")
    await wait_for(lambda: copy.stat().st_mode & stat.S_ISUID, "the setuid bit was set")
    owner = copy.stat().st_uid
    assert owner != OTHER_UID
    # While the task runs: set-uid on the sandbox's filesystem means nothing (nosuid).
    assert run_as_other_user(copy) == str(OTHER_UID)  # before: the owner's uid
    (executor.host_task_dir(task_id) / "go").write_text("")
    _, outcome = await running
    assert outcome.step(0).stdout == "6755\n"
    assert outcome.step(1).stdout == "went\n"
    # After it: the copy on the host lost its set-id bits.
    mode = copy.stat().st_mode
    assert not mode & (stat.S_ISUID | stat.S_ISGID), oct(mode)
    assert copy.stat().st_uid == owner
    assert run_as_other_user(copy) == str(OTHER_UID)


async def test_mountinfo_does_not_name_the_data_directory(
    executor_factory: ExecutorFactory, sandbox_driver: str
) -> None:
    executor = await executor_factory(**warm_pool_settings(sandbox_driver))
    own_filesystems(executor)
    pool = executor.executor.runner.driver.pool  # type: ignore[attr-defined]
    await wait_for(lambda: pool.ready_count == 1, "the pool filled")
    data_dir = str(executor.settings.data_dir.resolve())
    task_spec = [{"tool": "shell", "command": "cat /proc/self/mountinfo"}]
    _, warm = await executor.run_steps(task_spec)  # in the warm sandbox: its slot
    _, cold = await executor.run_steps(task_spec, limits={"disk_mb": 20})  # its own filesystem
    assert pool.claimed_total == 1
    for outcome in (warm, cold):
        mountinfo = outcome.step(0).stdout
        assert " /tasks" in mountinfo
        assert data_dir not in mountinfo  # before: the task directory's host path
        task_mount = next(line for line in mountinfo.splitlines() if " /tasks" in line)
        assert task_mount.split()[3] == "/", task_mount  # the root of its own filesystem


SPARSE = "import os; f = open('sparse', 'wb'); f.seek(200 * 2**20); f.write(b'end')"


async def test_a_tasks_files_stay_readable_after_it_ends(executor: ExecutorClient) -> None:
    filesystems = own_filesystems(executor)
    task_id, outcome = await executor.run_steps(
        [
            {
                "tool": "shell",
                "command": "mkdir -p sub/deep && echo hi > sub/deep/hi.txt && ln -s sub/deep/hi.txt link"
                " && ln sub/deep/hi.txt hard && mkfifo pipe && chmod 700 sub",
            },
            {"tool": "python", "code": SPARSE},
            {"tool": "write_file", "path": "notes.md", "content": "# notes\n"},
            {"tool": "shell", "command": "ls"},
        ],
        limits={"disk_mb": QUOTA_MB},
    )
    assert outcome.state == "TASK_STATE_COMPLETED", outcome.finished
    task_dir = executor.host_task_dir(task_id)
    assert not is_mount(task_dir) and not task_dir.is_symlink()
    assert (task_dir / "sub" / "deep" / "hi.txt").read_text() == "hi\n"
    assert os.readlink(task_dir / "link") == "sub/deep/hi.txt"
    assert (task_dir / "hard").stat().st_ino == (task_dir / "sub" / "deep" / "hi.txt").stat().st_ino
    assert not (task_dir / "pipe").exists()  # no FIFO on the host
    assert stat.S_IMODE((task_dir / "sub").stat().st_mode) == 0o700
    sparse = task_dir / "sparse"
    assert sparse.stat().st_size == 200 * MIB + 3 and sparse.stat().st_blocks * 512 < MIB  # holes kept
    assert (task_dir / "notes.md").read_text() == "# notes\n"
    log_text = (task_dir / "agent.log").read_text()
    assert "disk quota: enforced by the kernel" in log_text and "task completed" in log_text
    status = await executor.stub.GetExecutorStatus(executor_pb2.GetExecutorStatusRequest())
    assert "disk quota: enforced by the kernel (the sandbox's own filesystem)" in status.sandbox_limits
    memory = json.loads((task_dir / "memory.json").read_text())
    assert [entry["status"] for entry in memory] == ["completed"] * 4
    # The sandbox user still owns its files, as before.
    assert (task_dir / "notes.md").stat().st_uid == task_dir.stat().st_uid != 0
    assert loop_mounts_under(filesystems.data_dir) == [] or all(
        ".warm" in str(point) for point in loop_mounts_under(filesystems.data_dir)
    )


async def test_no_filesystem_outlives_the_executor(
    executor_factory: ExecutorFactory, sandbox_driver: str
) -> None:
    executor = await executor_factory(**warm_pool_settings(sandbox_driver))
    filesystems = own_filesystems(executor)
    data_dir = filesystems.data_dir
    sandbox_id = await create_sandbox(executor, QUOTA_MB)
    await executor.run_steps([{"tool": "shell", "command": "echo x > x"}], limits={"disk_mb": 20})
    assert len(loop_mounts_under(data_dir)) >= 2  # the long-lived sandbox's, the warm slot's
    assert sandbox_id in executor.executor.runner.sandboxes.sandbox_ids
    await executor.channel.close()
    await executor.executor.stop(grace=1)
    assert loop_mounts_under(data_dir) == []
    assert list((data_dir / task_fs.DISKS_DIR).glob("*.img")) == []
    # The loop devices go with the last reference (no sandbox's namespace keeps one).
    await wait_for(lambda: loop_devices_of(data_dir) == [], "the loop devices were freed")


async def test_what_a_crashed_executor_left_is_released_at_start(executor_factory: ExecutorFactory) -> None:
    """A crash leaves mounted filesystems: a task's, a warm slot with a claimed task in it. The
    next start copies the tasks' files out and unmounts everything."""
    first = await executor_factory()
    filesystems = own_filesystems(first)
    settings = first.settings
    await first.channel.close()
    await first.executor.stop(grace=1)
    tasks_dir = settings.tasks_dir
    assert filesystems.attach(tasks_dir / "crashed-task", 20)
    (tasks_dir / "crashed-task" / "result.txt").write_text("kept")
    slot = tasks_dir / task_fs.WARM_DIR / "deadbeef"
    assert filesystems.attach(slot, 20)
    (slot / "warm-task").mkdir()
    (slot / "warm-task" / "out.txt").write_text("kept too")
    (slot / "junk").write_text("dropped")
    (tasks_dir / "warm-task").symlink_to(f"{task_fs.WARM_DIR}/deadbeef/warm-task")
    assert len(loop_mounts_under(filesystems.data_dir)) == 2

    restarted = ExecutorClient(await start_executor(settings), settings)
    try:
        await check_released(restarted, filesystems, tasks_dir, slot)
    finally:
        await restarted.channel.close()
        await restarted.executor.stop(grace=1)


async def check_released(
    restarted: ExecutorClient, filesystems: TaskFilesystems, tasks_dir: Path, slot: Path
) -> None:
    assert loop_mounts_under(filesystems.data_dir) == [] or all(
        point.parent.name == task_fs.WARM_DIR and point.name != "deadbeef"
        for point in loop_mounts_under(filesystems.data_dir)
    )
    assert (tasks_dir / "crashed-task" / "result.txt").read_text() == "kept"
    assert not (tasks_dir / "warm-task").is_symlink()
    assert (tasks_dir / "warm-task" / "out.txt").read_text() == "kept too"
    assert is_gone(slot)
    _, outcome = await restarted.run_steps([{"tool": "shell", "command": "echo fine"}])
    assert outcome.step(0).stdout == "fine\n"


@pytest.mark.docker
async def test_a_docker_engine_that_cannot_see_our_mounts_gets_measured_quotas(
    executor_factory: ExecutorFactory, sandbox_driver: str, tmp_path: Path
) -> None:
    """CORRAL_DOCKER_TASKS_HOST_DIR says the engine sees tasks_dir elsewhere: mounts made here
    would not reach it, so quotas are measured, and each task's agent.log says why."""
    if sandbox_driver != "docker":
        pytest.skip("a docker driver setting")
    executor = await executor_factory(docker_tasks_host_dir=tmp_path / "data0" / "tasks")
    task_id, outcome = await executor.run_steps([{"tool": "shell", "command": "echo x > x"}])
    assert outcome.state == "TASK_STATE_COMPLETED"
    log_text = (executor.host_task_dir(task_id) / "agent.log").read_text()
    assert (
        "disk quota: measured every 0.5s, not enforced by the kernel (CORRAL_DOCKER_TASKS_HOST_DIR is set"
        in log_text
    )


def test_an_unprivileged_executor_says_why_it_measures(tmp_path: Path) -> None:
    """`corral up` as a user: no filesystem can be made, and the reason is given."""
    code = (
        "from pathlib import Path; from corral.config import Settings; "
        "from services.executor.task_fs import TaskFilesystems; "
        f"print(TaskFilesystems(Settings(data_dir=Path('{tmp_path}/data'))).description)"
    )
    tmp_path.chmod(0o777)
    result = subprocess.run(
        [
            "setpriv",
            f"--reuid={OTHER_UID}",
            f"--regid={OTHER_UID}",
            "--clear-groups",
            "--",
            sys.executable,
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[3],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip()
        == "disk quota: measured every 0.5s, not enforced by the kernel (the executor is not root)"
    )


async def test_a_tasks_loop_device_is_freed_while_other_sandboxes_live(executor: ExecutorClient) -> None:
    """A sandbox started while another task's filesystem is mounted must not keep that
    filesystem's loop device busy after the task (bubblewrap's staging namespace copied it)."""
    own_filesystems(executor)
    task_id = executor.new_task_id()
    running = asyncio.ensure_future(
        executor.run(
            spec(
                [
                    {
                        "tool": "shell",
                        "command": "for i in $(seq 600); do [ -e go ] && break; sleep 0.05; done; echo went",
                    },
                ],
                limits={"disk_mb": 20},
            ),
            task_id=task_id,
        )
    )
    task_dir = executor.host_task_dir(task_id)
    await wait_for(lambda: is_mount(task_dir), "the task's filesystem was mounted")
    image = task_fs.backing_file(task_dir)
    assert image is not None
    sandbox_id = await create_sandbox(executor, QUOTA_MB)  # started while the task's fs is mounted
    (task_dir / "go").write_text("")
    _, outcome = await running
    assert outcome.step(0).stdout == "went\n"
    assert sandbox_id in executor.executor.runner.sandboxes.sandbox_ids
    await wait_for(
        lambda: not any(str(image) in dev for dev in loop_backings()), "the task's loop device was freed"
    )


def loop_backings() -> list[str]:
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            found.append(backing.read_text())
    return found
