"""What a step cannot reach: root, other tasks, host files and processes, the network."""

from __future__ import annotations

import asyncio
import socket

from .conftest import ExecutorClient


async def test_user_is_not_root_and_host_is_hidden(executor: ExecutorClient) -> None:
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
        ]
    )
    assert outcome.step(0).stdout == "1000\n1000\nsandbox\n"
    assert outcome.step(1).stdout == f"{task_id}\n"
    for index in (2, 3, 4, 6, 7):
        assert outcome.step(index).exit_code != 0, index
    assert "Permission denied" in outcome.step(3).stderr
    processes = outcome.step(5).stdout.strip().splitlines()
    # Only the sandbox's own processes: bwrap's init, the agent, the shell and ps.
    assert len(processes) <= 5, processes
    assert processes[0].split()[0] == "1" and "bwrap" in processes[0]
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


async def test_network_when_the_task_asks(executor: ExecutorClient) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        _, outcome = await executor.run_steps(
            [{"tool": "python", "code": (
                f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5)\nprint('connected')\n"
            )}],
            network=True,
        )
    finally:
        listener.close()
    assert outcome.step(0).stdout == "connected\n", outcome.step(0).stderr
