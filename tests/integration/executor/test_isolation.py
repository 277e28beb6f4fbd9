"""What a step cannot reach: root, other tasks, host files and processes, the network (both drivers)."""

from __future__ import annotations

import asyncio
import json
import pwd
import socket

import grpc
import pytest

from corral.v1 import task_pb2
from services.executor.drivers import seccomp

from .conftest import GVISOR_NO_STATX, ExecutorClient, grpc_code, gvisor_skip, spec


async def test_user_is_not_root_and_host_is_hidden(executor: ExecutorClient) -> None:
    gvisor_skip(executor.driver, GVISOR_NO_STATX)
    other = executor.settings.tasks_dir / "other-task"
    other.mkdir(parents=True)
    (other / "secret.txt").write_text("top secret")
    task_id, outcome = await executor.run_steps(
        [
            {"tool": "shell", "command": "id -u; id -g; hostname"},
            {"tool": "shell", "command": "ls /tasks"},
            {"tool": "shell", "command": "cat /tasks/other-task/secret.txt", "continue_on_error": True},
            {"tool": "shell", "command": "cat /etc/shadow", "continue_on_error": True},
            {"tool": "shell", "command": "ls /root", "continue_on_error": True},
            {"tool": "shell", "command": "ps -eo pid,args --no-headers"},
            {"tool": "shell", "command": "touch /usr/x /etc/x", "continue_on_error": True},
            {"tool": "shell", "command": f"cat {other}/secret.txt", "continue_on_error": True},
            {"tool": "shell", "command": "id -un; id -gn; getent passwd | cut -d: -f1 | sort | tr '\\n' ' '"},
        ]
    )
    assert outcome.step(0).stdout == "1000\n1000\nsandbox\n"
    assert outcome.step(1).stdout == f"{task_id}\n"
    for index in (2, 3, 4, 6, 7):
        assert outcome.step(index).exit_code != 0, index
    assert "Permission denied" in outcome.step(3).stderr
    # The sandbox has its own users, the same on both drivers; the host's names stay hidden.
    name, group, users = outcome.step(8).stdout.splitlines()
    assert (name, group) == ("agent", "agent")
    host_names = {entry.pw_name for entry in pwd.getpwall() if entry.pw_uid >= 1000} - {"agent", "nobody"}
    assert not host_names & set(users.split()), "host accounts are visible in the sandbox"
    processes = outcome.step(5).stdout.strip().splitlines()
    # Only the sandbox's own processes: its init (bwrap's, or the syscall filter's loader), the
    # agent, the shell and ps.
    assert len(processes) <= 5, processes
    init = "bwrap" if executor.driver == "bubblewrap" else seccomp.LOADER.splitlines()[0]
    assert processes[0].split()[0] == "1" and init in processes[0]
    assert "Read-only file system" in outcome.step(6).stderr


async def test_no_network_by_default(executor: ExecutorClient) -> None:
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        _, outcome = await executor.run_steps(
            [
                {"tool": "python", "code": "import socket\nprint(sorted(n for _, n in socket.if_nameindex()))"},
                {"tool": "python", "code": (
                    "import socket\n"
                    f"socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                    "print('connected')\n"
                ), "continue_on_error": True},
            ]
        )
    finally:
        listener.close()
    assert outcome.step(0).stdout == "['lo']\n"
    assert outcome.step_state(1) == "STEP_STATE_FAILED"
    assert "ConnectionRefusedError" in outcome.step(1).stderr


# A container on Docker's bridge reaches the host at its default gateway, not 127.0.0.1.
HOST_ADDRESS = """
def host_address():
    try:
        with open("/proc/net/route") as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if fields[1] == "00000000":
                    return socket.inet_ntoa(bytes.fromhex(fields[2])[::-1])
    except OSError:
        pass
    return "127.0.0.1"
"""


async def test_network_when_the_task_asks(executor: ExecutorClient) -> None:
    if executor.driver == "bubblewrap":
        pytest.skip("a bubblewrap sandbox's network reaches nothing of the host: test_network_bwrap.py")
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen()
    port = listener.getsockname()[1]
    find_host = HOST_ADDRESS
    try:
        _, outcome = await executor.run_steps(
            [{"tool": "python", "code": (
                f"import socket\n{find_host}\n"
                "try:\n"
                f"    socket.create_connection((host_address(), {port}), timeout=5)\n    print('connected')\n"
                "except ConnectionRefusedError:\n    print('refused')\n"
            )}],
            network=True,
        )
    finally:
        listener.close()
    # Before, the container connected through Docker's bridge; the host's table refuses the
    # host to Corral's network now (test_network_docker.py has the rest).
    assert outcome.step(0).stdout == "refused\n", outcome.step(0).stderr


async def test_a_used_task_id_is_never_run_again(executor: ExecutorClient) -> None:
    """Before, a RunTask naming a finished task's id ran in that task's directory and read
    what it left there (its credentials); now the executor refuses the id."""
    victim, outcome = await executor.run_steps([{"tool": "shell", "command": "echo hunter2 > credentials"}])
    assert outcome.state == "TASK_STATE_COMPLETED", outcome.finished
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await executor.run(spec([{"tool": "shell", "command": "cat credentials"}]), task_id=victim)
    assert grpc_code(err.value) == grpc.StatusCode.ALREADY_EXISTS
    # "already ran" while the executor still holds the run for a scheduler; "already used" after.
    details = err.value.details() or ""
    assert f"task {victim} already ran on this executor" in details or f"task id {victim} was already used" in details
    # The victim's directory is as it left it.
    assert (executor.host_task_dir(victim) / "credentials").read_text() == "hunter2\n"


async def test_a_fifo_planted_as_agent_log_does_not_hang_the_executor(executor: ExecutorClient) -> None:
    """Before, a FIFO in place of agent.log blocked the executor's open for ever (and every
    later task with it); now the journal refuses a non-regular file and the task goes on."""
    task_id, outcome = await asyncio.wait_for(
        executor.run_steps([
            {"tool": "shell", "command": "rm agent.log && mkfifo agent.log && test -p agent.log"},
            {"tool": "shell", "command": "echo still running"},
        ]),
        60,
    )
    assert outcome.state == "TASK_STATE_COMPLETED", outcome.finished
    assert outcome.step(1).stdout == "still running\n"
    # memory.json (replaced by rename, never opened in place) still has every step.
    memory = json.loads((executor.host_task_dir(task_id) / "memory.json").read_text())
    assert [entry["status"] for entry in memory] == ["completed", "completed"]
    _, after = await asyncio.wait_for(executor.run_steps([{"tool": "shell", "command": "echo next"}]), 60)
    assert after.state == "TASK_STATE_COMPLETED" and after.step(0).stdout == "next\n"


async def test_write_file_cannot_be_raced_out_of_the_task_directory(executor: ExecutorClient) -> None:
    """A background process flips `sub` between a directory and a symlink to /tmp while 80
    write_file steps write into it. Before, about a third of the writes landed in /tmp (27 and
    36 of 80 in two runs); now the agent opens beneath the task directory (openat2
    RESOLVE_BENEATH), so none can, and the raced writes fail with the reason."""
    # renameat2(RENAME_EXCHANGE) swaps the directory `sub` and the symlink `link` -> /tmp
    # atomically, over and over: `sub` always exists, half the time a link out.
    flipper = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "os.mkdir('sub')\n"
        "os.symlink('/tmp', 'link')\n"
        "while True:\n"
        "    libc.renameat2(-100, b'sub', -100, b'link', 2)\n"
    )
    writes = [
        {"tool": "write_file", "path": f"sub/x-{n}", "content": "where am I?", "continue_on_error": True}
        for n in range(80)
    ]
    _, outcome = await executor.run_steps([
        {"tool": "write_file", "path": "flip.py", "content": flipper},
        {"tool": "shell", "command": "python3 flip.py >/dev/null 2>&1 & sleep 0.2"},
        *writes,
        {"tool": "shell", "command": "ls /tmp | grep -c '^x-' || true"},
    ])
    escaped = outcome.step(82).stdout.strip()
    assert escaped == "0", f"{escaped} writes landed in /tmp"
    for n in range(2, 82):
        result = outcome.step(n)
        assert result.state == task_pb2.STEP_STATE_COMPLETED or result.error, result
