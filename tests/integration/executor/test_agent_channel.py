"""The agent channel (drivers/agent_channel.py): lines split anyhow across chunks, big replies
in linear time, and an oversized line failing the channel, on its own and in a real sandbox."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from services.executor.drivers.agent_channel import MAX_LINE_BYTES, AgentChannel
from services.executor.drivers.base import MIB, ProcessRequest, SandboxError

from .conftest import ExecutorClient


class FakeAgent:
    """Records what the channel sends; replies are fed back by the test."""

    def __init__(self) -> None:
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.channel = AgentChannel(self.send_line, {"task_id": "test"})

    async def send_line(self, line: bytes) -> None:
        assert line.endswith(b"\n")
        self.sent.put_nowait(json.loads(line))

    async def next_request(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.sent.get(), 5)


def line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


async def test_lines_split_across_chunks_and_chunks_holding_many_lines() -> None:
    agent = FakeAgent()
    request = ProcessRequest(kind="shell", code="echo hi", timeout=5)
    running = asyncio.create_task(
        agent.channel.run_process(request, {"PATH": "/bin"}, {"memory_mb": 1}, 1000, lambda s, d: None)
    )
    agent.channel.feed(line({"type": "ready"}))
    await agent.channel.ready
    sent = await agent.next_request()
    assert sent["op"] == "run" and sent["command"] == "echo hi" and sent["limits"] == {"memory_mb": 1}
    assert sent["max_output_bytes"] == 1000 and sent["env"] == {"PATH": "/bin"}
    stream = b"".join(
        [
            line({"type": "output", "id": sent["id"], "stream": "stdout", "data": "h"}),
            b"\n  \n",  # blank lines are skipped
            line({"type": "output", "id": sent["id"], "stream": "stderr", "data": "e"}),
            line({"type": "output", "id": sent["id"], "stream": "stdout", "data": "i\n"}),
            line({"type": "exit", "id": sent["id"], "exit_code": 3, "limit_events": {"x": 1}}),
        ]
    )
    for i in range(0, len(stream), 7):  # odd chunk sizes: lines end mid-chunk
        agent.channel.feed(stream[i : i + 7])
    result, reply = await asyncio.wait_for(running, 5)
    assert (result.exit_code, result.stdout, result.stderr) == (3, "hi\n", "e")
    assert reply["limit_events"] == {"x": 1}


async def test_a_cancel_arriving_with_the_exit_report_is_not_lost() -> None:
    # asyncio.wait_for (3.11) would return the report and drop the cancellation: a warm pool
    # stopping mid-start waited forever on a filler that had swallowed its cancel this way.
    agent = FakeAgent()
    request = ProcessRequest(kind="shell", code="true", timeout=5)
    running = asyncio.create_task(agent.channel.run_process(request, {}, {}, 1000, lambda s, d: None))
    sent = await agent.next_request()
    agent.channel.feed(line({"type": "exit", "id": sent["id"], "exit_code": 0}))
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    kill = await agent.next_request()
    assert kill["op"] == "kill" and kill["target"] == sent["id"]


async def test_a_big_reply_in_small_chunks_is_linear() -> None:
    agent = FakeAgent()
    reading = asyncio.create_task(agent.channel.read_file("big.txt", 64 * MIB))
    sent = await agent.next_request()
    content = "x" * (32 * MIB)
    data = line({"type": "file", "id": sent["id"], "content": content})
    began = time.monotonic()
    for i in range(0, len(data), 64 * 1024):
        agent.channel.feed(data[i : i + 64 * 1024])
    # Re-copying the buffer per chunk would move ~8 GiB here.
    assert time.monotonic() - began < 2
    assert await asyncio.wait_for(reading, 5) == content


async def test_an_oversized_line_fails_the_channel() -> None:
    agent = FakeAgent()
    agent.channel.feed(line({"type": "ready"}))
    writing = asyncio.create_task(agent.channel.write_file("a.txt", "A", 100))
    await agent.next_request()
    chunk = b"y" * MIB
    for _ in range(MAX_LINE_BYTES // MIB):
        agent.channel.feed(chunk)
    assert agent.channel.failure is None  # exactly the limit, no newline yet: still fine
    agent.channel.feed(b"y")
    assert agent.channel.failure is not None
    with pytest.raises(SandboxError, match="oversized message"):
        await asyncio.wait_for(writing, 5)
    # Nothing that follows is trusted, and no new request goes out.
    agent.channel.feed(line({"type": "ready"}))
    with pytest.raises(SandboxError, match="oversized message"):
        await agent.channel.read_file("a.txt", 100)
    assert agent.sent.empty()


async def test_an_oversized_line_ending_in_the_same_chunk_fails_the_channel() -> None:
    agent = FakeAgent()
    agent.channel.feed(b"z" * (MAX_LINE_BYTES + 1) + b"\n" + line({"type": "ready"}))
    assert agent.channel.failure is not None
    with pytest.raises(SandboxError, match="oversized message"):
        await agent.channel.ready


async def test_a_step_flooding_the_agents_stdout_fails_the_sandbox_not_the_executor(
    executor: ExecutorClient,
) -> None:
    # A step runs as the agent's uid, so it may open the agent's stdout and write into the
    # protocol stream; an endless line must end that sandbox with a clear error. (Under
    # bubblewrap the open is refused: python3 is owned by a uid unmapped in the sandbox's user
    # namespace, so the agent cannot be inspected from inside, /proc/PID/fd included.)
    flood = (
        "import os\n"
        "for pid in sorted(int(p) for p in os.listdir('/proc') if p.isdigit()):\n"
        "    try:\n"
        "        cmd = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
        "    except OSError:\n"
        "        continue\n"
        "    if cmd.split(b'\\0')[:3] == [b'/usr/bin/python3', b'-I', b'/app/agent.py']:\n"
        "        break\n"
        "fd = os.open(f'/proc/{pid}/fd/1', os.O_WRONLY)\n"
        "block = b'q' * (1 << 20)\n"
        "for _ in range(80):\n"
        "    os.write(fd, block)\n"
    )
    _, outcome = await executor.run_steps([{"tool": "python", "code": flood, "timeout": 60}])
    assert outcome.state == "TASK_STATE_FAILED", outcome.finished
    step = outcome.step(0)
    if executor.driver == "bubblewrap" and "PermissionError" in step.stderr:
        assert "/fd/1" in step.stderr, step.stderr
    else:
        assert "oversized message" in step.error, (step.error, step.stderr[-500:])
    # The executor still serves tasks.
    _, after = await executor.run_steps([{"tool": "shell", "command": "echo ok"}])
    assert after.state == "TASK_STATE_COMPLETED", after.finished
    assert after.step(0).stdout == "ok\n"
