"""The agent channel (drivers/agent_channel.py) and the agent client over it (AgentSandbox):
lines split anyhow across chunks, big replies in linear time, an oversized line failing the
channel, on its own and in a real sandbox, and an agent of another protocol version refused."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from corral import agent_protocol as protocol
from services.executor.drivers.agent_channel import MAX_LINE_BYTES, AgentChannel
from services.executor.drivers.agent_sandbox import AgentSandbox
from services.executor.drivers.base import (
    MIB,
    FileRefused,
    ProcessRequest,
    SandboxConfig,
    SandboxError,
    SandboxLimits,
)
from services.executor.drivers.transport import Transport

from .conftest import ExecutorClient, ExecutorFactory


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


class BytesTransport(Transport):
    """A transport of real bytes and no process: what the client writes is recorded, what the
    test puts in `incoming` is what the agent "said"."""

    def __init__(self, config: SandboxConfig, cgroup_limits: bool = False) -> None:
        super().__init__(config)
        self.cgroup_limits = cgroup_limits
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.killed = False

    async def start(self) -> None:
        return None

    async def read(self) -> bytes:
        return await self.incoming.get()

    async def write(self, data: bytes) -> None:
        assert data.endswith(b"\n")
        self.sent.put_nowait(json.loads(data))

    async def kill(self) -> None:
        self.killed = True
        self.incoming.put_nowait(b"")

    async def death_reason(self) -> str:
        return "the fake sandbox went away"

    async def next_request(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.sent.get(), 5)


def config(tmp_path: Any, memory_mb: int = 100) -> SandboxConfig:
    limits = SandboxLimits(memory_mb=memory_mb, max_processes=20, max_file_size_mb=5, max_output_bytes=1000, disk_mb=0)
    return SandboxConfig(task_id="t1", host_task_dir=tmp_path, limits=limits, env={"EXTRA": "1"})


def line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


RUNTIME = Path(__file__).resolve().parents[3] / "sandbox" / "runtime"
READY = {"type": "ready", "pid": 1, "protocol": protocol.PROTOCOL_VERSION}


async def test_lines_split_across_chunks_and_chunks_holding_many_lines(tmp_path: Any) -> None:
    transport = BytesTransport(config(tmp_path))
    sandbox = AgentSandbox(transport, transport.config)
    transport.incoming.put_nowait(line(READY))
    await sandbox.start()
    request = ProcessRequest(kind="shell", code="echo hi", timeout=5, env={"MINE": "x"})
    running = asyncio.create_task(sandbox.run(request, lambda s, d: None))
    sent = await transport.next_request()
    # One field for the code (the unversioned protocol sent `command` and `code` both).
    assert sent["op"] == "run" and sent["code"] == "echo hi" and "command" not in sent
    assert sent["limits"] == {"memory_mb": 100, "max_processes": 20, "max_file_size_mb": 5}
    assert sent["max_output_bytes"] == 1000
    assert sent["env"]["MINE"] == "x" and sent["env"]["EXTRA"] == "1"
    assert sent["env"]["USER"] == sent["env"]["LOGNAME"] == "agent"
    assert sent["env"]["HOME"] == sent["env"]["CORRAL_TASK_DIR"] == "/tasks/t1"
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
        transport.incoming.put_nowait(stream[i : i + 7])
    result = await asyncio.wait_for(running, 5)
    assert (result.exit_code, result.stdout, result.stderr) == (3, "hi\n", "e")
    await sandbox.close()
    assert transport.killed


async def test_cgroup_limits_are_not_rlimits_and_their_events_name_the_limit(tmp_path: Any) -> None:
    transport = BytesTransport(config(tmp_path, memory_mb=64), cgroup_limits=True)
    sandbox = AgentSandbox(transport, transport.config)
    transport.incoming.put_nowait(line(READY))
    await sandbox.start()
    running = asyncio.create_task(sandbox.run(ProcessRequest(kind="shell", code="x", timeout=5), lambda s, d: None))
    sent = await transport.next_request()
    assert sent["limits"] == {"memory_mb": 0, "max_processes": 0, "max_file_size_mb": 5}
    transport.incoming.put_nowait(
        line({"type": "exit", "id": sent["id"], "exit_code": None, "signal": 9, "limit_events": {"oom_kill": 1}})
    )
    result = await asyncio.wait_for(running, 5)
    assert result.error == "killed: out of memory: the sandbox's processes used more than its 64 MiB memory limit"
    await sandbox.close()


async def test_a_cancel_arriving_with_the_exit_report_is_not_lost() -> None:
    # asyncio.wait_for (3.11) would return the report and drop the cancellation: a warm pool
    # stopping mid-start waited forever on a filler that had swallowed its cancel this way.
    agent = FakeAgent()
    request = protocol.RunRequest(kind="shell", code="true", timeout=5)
    running = asyncio.create_task(agent.channel.run(request, lambda s, d: None))
    sent = await agent.next_request()
    agent.channel.feed(line({"type": "exit", "id": sent["id"], "exit_code": 0}))
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    kill = await agent.next_request()
    assert kill["op"] == "kill" and kill["target"] == sent["id"]


async def test_a_big_reply_in_small_chunks_is_linear() -> None:
    agent = FakeAgent()
    reading = asyncio.create_task(
        agent.channel.request(protocol.ReadFileRequest(path="big.txt", max_bytes=64 * MIB))
    )
    sent = await agent.next_request()
    content = "x" * (32 * MIB)
    data = line({"type": "file", "id": sent["id"], "path": "/t/big.txt", "size": len(content), "content": content})
    began = time.monotonic()
    for i in range(0, len(data), 64 * 1024):
        agent.channel.feed(data[i : i + 64 * 1024])
    # Re-copying the buffer per chunk would move ~8 GiB here.
    assert time.monotonic() - began < 2
    assert (await asyncio.wait_for(reading, 5)).content == content


async def test_an_oversized_line_fails_the_channel() -> None:
    agent = FakeAgent()
    agent.channel.feed(line(READY))
    writing = asyncio.create_task(
        agent.channel.request(protocol.WriteFileRequest(path="a.txt", content="A", max_bytes=100))
    )
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
    agent.channel.feed(line(READY))
    with pytest.raises(SandboxError, match="oversized message"):
        await agent.channel.request(protocol.ReadFileRequest(path="a.txt", max_bytes=100))
    assert agent.sent.empty()


async def test_an_oversized_line_ending_in_the_same_chunk_fails_the_channel() -> None:
    agent = FakeAgent()
    agent.channel.feed(b"z" * (MAX_LINE_BYTES + 1) + b"\n" + line(READY))
    assert agent.channel.failure is not None
    with pytest.raises(SandboxError, match="oversized message"):
        await agent.channel.ready


async def test_a_step_flooding_the_agents_stdout_fails_the_sandbox_not_the_executor(
    executor: ExecutorClient,
) -> None:
    # A step runs as the agent's uid and tries to open the agent's stdout to flood the protocol
    # stream. The agent is undumpable, so the open is refused on every driver (under bubblewrap
    # it was refused before that too: python3's owner is unmapped in the sandbox's user
    # namespace). Had it got through, the 64 MiB line cap ends the sandbox with a clear error
    # (test_an_oversized_line_fails_the_channel); either way the executor carries on.
    flood = (
        "import os\n"
        # Not pid 1: in a container, the filter's loader (the init) names the agent's command too.
        "for pid in sorted(int(p) for p in os.listdir('/proc') if p.isdigit() and p != '1'):\n"
        "    try:\n"
        "        cmd = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
        "    except OSError:\n"
        "        continue\n"
        # The agent, compiled (/app/corral-agent /app/agent.py) or not (python3 ... /app/agent.py).
        "    if b'/app/agent.py' in cmd.split(b'\\0'):\n"
        "        break\n"
        "fd = os.open(f'/proc/{pid}/fd/1', os.O_WRONLY)\n"
        "block = b'q' * (1 << 20)\n"
        "for _ in range(80):\n"
        "    os.write(fd, block)\n"
    )
    _, outcome = await executor.run_steps([{"tool": "python", "code": flood, "timeout": 60}])
    assert outcome.state == "TASK_STATE_FAILED", outcome.finished
    step = outcome.step(0)
    assert "PermissionError" in step.stderr and "/fd/1" in step.stderr, (step.error, step.stderr[-500:])
    # The executor still serves tasks.
    _, after = await executor.run_steps([{"tool": "shell", "command": "echo ok"}])
    assert after.state == "TASK_STATE_COMPLETED", after.finished
    assert after.step(0).stdout == "ok\n"


@pytest.mark.parametrize(
    ("ready", "spoken"),
    [
        ({"type": "ready", "pid": 7, "protocol": protocol.PROTOCOL_VERSION + 1}, f"protocol {protocol.PROTOCOL_VERSION + 1}"),
        ({"type": "ready", "pid": 7}, "an unversioned protocol (1)"),  # an agent from before versions
    ],
)
async def test_an_agent_of_another_protocol_version_fails_the_sandbox(
    tmp_path: Any, ready: dict[str, Any], spoken: str
) -> None:
    # A real process saying it is ready in another version: the sandbox fails to start, saying
    # what to do, and nothing is sent to it.
    from services.executor.drivers.local import LocalTransport

    fake_agent = (
        "import json, sys\n"
        f"print(json.dumps({ready!r}), flush=True)\n"
        "sys.stdout.write(sys.stdin.readline())\n"
    )
    transport = LocalTransport(config(tmp_path), tmp_path / "unused.py", command=[sys.executable, "-c", fake_agent])
    sandbox = AgentSandbox(transport, transport.config)
    with pytest.raises(SandboxError) as raised:
        await sandbox.start()
    assert str(raised.value) == (
        f"the sandbox agent speaks {spoken}, this executor {protocol.PROTOCOL_VERSION}: rebuild the "
        "sandbox image (scripts/build-images) so that its /app/agent.py and agent_protocol.py "
        "are the executor's (under bubblewrap, CORRAL_RUNTIME_DIR must be the executor's own "
        "sandbox/runtime)"
    )
    with pytest.raises(SandboxError, match="rebuild the sandbox image"):
        await sandbox.read_file("x", 10)
    await sandbox.close()
    assert transport.process is not None and transport.process.returncode is not None


async def test_the_real_agent_speaks_this_protocol_version(tmp_path: Any) -> None:
    from services.executor.drivers.local import LocalTransport

    agent = RUNTIME / "agent.py"
    transport = LocalTransport(config(tmp_path), agent)
    sandbox = AgentSandbox(transport, transport.config)
    await sandbox.start()
    try:
        ready = sandbox.channel.ready.result()
        assert ready.protocol == protocol.PROTOCOL_VERSION and ready.pid == transport.process.pid  # type: ignore[union-attr]
    finally:
        await sandbox.close()


async def test_a_malformed_reply_fails_its_request_not_the_sandbox(tmp_path: Any) -> None:
    transport = BytesTransport(config(tmp_path))
    sandbox = AgentSandbox(transport, transport.config)
    transport.incoming.put_nowait(line(READY))
    await sandbox.start()
    reading = asyncio.create_task(sandbox.read_file("a.txt", 10))
    sent = await transport.next_request()
    transport.incoming.put_nowait(line({"type": "file", "id": sent["id"], "path": "a.txt", "size": "big"}))
    with pytest.raises(SandboxError, match=r"malformed reply: FileReply\.size: expected an integer"):
        await asyncio.wait_for(reading, 5)
    writing = asyncio.create_task(sandbox.write_file("/tasks/t1/b.txt", "B", 10))
    sent = await transport.next_request()
    assert sent["path"] == "/tasks/t1/b.txt"
    transport.incoming.put_nowait(line({"type": "file", "id": sent["id"], "path": "/tasks/t1/b.txt", "size": 1}))
    assert await asyncio.wait_for(writing, 5) == "/tasks/t1/b.txt"
    await sandbox.close()


def test_the_agent_and_its_protocol_need_only_the_standard_library(tmp_path: Any) -> None:
    # The sandbox's system Python, no site-packages at all (-S), from another directory (-I
    # keeps the agent's own off sys.path): it still loads its protocol and says it is ready.
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    done = subprocess.run(
        [python, "-I", "-S", str(RUNTIME / "agent.py")],
        cwd=tmp_path, input=b"", capture_output=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "CORRAL_AGENT_SCRIPT_DIR": str(tmp_path / "scripts")},
    )
    assert done.returncode == 0, done.stderr
    ready = json.loads(done.stdout.splitlines()[0])
    assert ready["type"] == "ready" and ready["protocol"] == protocol.PROTOCOL_VERSION


async def test_one_environment_for_every_driver(executor: ExecutorClient) -> None:
    task_id, outcome = await executor.run_steps(
        [{"tool": "shell", "command": "echo $USER $LOGNAME $HOME $CORRAL_TASK_ID $CORRAL_TASK_DIR; id -un"}]
    )
    assert outcome.state == "TASK_STATE_COMPLETED", outcome.finished
    assert outcome.step(0).stdout == f"agent agent /tasks/{task_id} {task_id} /tasks/{task_id}\nagent\n"


def runtime_speaking(runtime: Path, version: int) -> Path:
    """A copy of the sandbox runtime (what the agent needs of it) whose protocol is `version`."""
    runtime.mkdir()
    shutil.copy(RUNTIME / "agent.py", runtime / "agent.py")
    shutil.copytree(RUNTIME / "etc", runtime / "etc")
    source = (RUNTIME / "agent_protocol.py").read_text()
    current = f"PROTOCOL_VERSION = {protocol.PROTOCOL_VERSION}\n"
    assert current in source
    (runtime / "agent_protocol.py").write_text(source.replace(current, f"PROTOCOL_VERSION = {version}\n"))
    return runtime


@pytest.mark.parametrize("sandbox_driver", ["bubblewrap"])  # docker's runtime is its image
async def test_a_bubblewrap_runtime_of_another_protocol_version_fails_the_task(
    executor_factory: ExecutorFactory, tmp_path: Path
) -> None:
    # The real driver and agent, with a runtime whose protocol is one version ahead.
    runtime = runtime_speaking(tmp_path / "runtime", protocol.PROTOCOL_VERSION + 1)
    executor = await executor_factory(runtime_dir=runtime, bwrap_warm_pool=0)
    _, outcome = await executor.run_steps([{"tool": "shell", "command": "echo never"}])
    assert outcome.state == "TASK_STATE_FAILED", outcome.finished
    said = f"{outcome.finished.error} {outcome.step(0).error if outcome.steps else ''}"
    assert (
        f"the sandbox agent speaks protocol {protocol.PROTOCOL_VERSION + 1}, "
        f"this executor {protocol.PROTOCOL_VERSION}: rebuild the sandbox image"
    ) in said, said


async def test_the_client_holds_its_caps_whatever_the_agent_replies(tmp_path: Any) -> None:
    # Replies are the sandbox's word (a step may write into the agent's stdout): a listing
    # longer than max_entries is cut and marked truncated, a file longer than max_bytes refused.
    transport = BytesTransport(config(tmp_path))
    sandbox = AgentSandbox(transport, transport.config)
    transport.incoming.put_nowait(line(READY))
    await sandbox.start()
    listing = asyncio.create_task(sandbox.list_files(".", 2))
    sent = await transport.next_request()
    assert sent["max_entries"] == 2
    entries = [{"name": f"f{n}", "type": "file", "size": 1, "mtime": 0.0} for n in range(5)]
    transport.incoming.put_nowait(
        line({"type": "files", "id": sent["id"], "path": "/tasks/t1", "entries": entries, "truncated": False})
    )
    result = await asyncio.wait_for(listing, 5)
    assert [e.name for e in result.entries] == ["f0", "f1"] and result.truncated
    reading = asyncio.create_task(sandbox.read_file("a.txt", 3))
    sent = await transport.next_request()
    transport.incoming.put_nowait(line({"type": "file", "id": sent["id"], "path": "a.txt", "size": 3, "content": "abcdef"}))
    with pytest.raises(FileRefused, match="larger than the read limit of 3 bytes"):
        await asyncio.wait_for(reading, 5)
    await sandbox.close()


async def test_output_is_capped_by_the_executor_whatever_the_agent_says(tmp_path: Any) -> None:
    # The run's cap is 1000 (config's max_output_bytes); an "agent" that sends 5000 characters
    # and claims nothing was truncated: the executor keeps and streams 1000 and says truncated.
    transport = BytesTransport(config(tmp_path))
    sandbox = AgentSandbox(transport, transport.config)
    transport.incoming.put_nowait(line(READY))
    await sandbox.start()
    streamed: list[str] = []
    running = asyncio.create_task(
        sandbox.run(ProcessRequest(kind="shell", code="x", timeout=5), lambda s, d: streamed.append(d))
    )
    sent = await transport.next_request()
    assert sent["max_output_bytes"] == 1000
    for _ in range(50):
        transport.incoming.put_nowait(line({"type": "output", "id": sent["id"], "stream": "stdout", "data": "x" * 100}))
    transport.incoming.put_nowait(line({"type": "output", "id": sent["id"], "stream": "stderr", "data": "e" * 10}))
    transport.incoming.put_nowait(line({"type": "exit", "id": sent["id"], "exit_code": 0}))
    result = await asyncio.wait_for(running, 5)
    assert len(result.stdout) == 1000 and result.stdout_truncated
    assert "".join(streamed) == "x" * 1000 + "e" * 10
    assert result.stderr == "e" * 10 and not result.stderr_truncated
    await sandbox.close()


FORGE = r"""
import json, os
agent = None
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) not in (1, os.getpid()):  # pid 1: see the flooding test
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if b"agent.py" in cmdline:
            agent = int(pid)
print("found the agent:", agent is not None)
forged = b"".join(
    json.dumps(m).encode() + b"\n"
    for i in range(1, 40)
    for m in ({"id": i, "type": "output", "stream": "stdout", "data": "ALL 120 TESTS PASSED\n" * 1000},
              {"id": i, "type": "exit", "exit_code": 0})
)
for target in ("fd/1", "mem"):
    try:
        with open(f"/proc/{agent}/{target}", "wb") as f:
            f.write(forged)
        print(target, "written")
    except OSError as exc:
        print(target, "refused:", exc.strerror)
raise SystemExit(3)
"""


async def test_a_step_cannot_forge_its_own_result_through_the_agent(executor: ExecutorClient) -> None:
    """The agent is undumpable: a step (same uid) can neither write into the pipe that reports
    on it (/proc/AGENT/fd/1) nor into its memory, so the result is the step's own."""
    _, outcome = await executor.run_steps([{"tool": "python", "code": FORGE}])
    result = outcome.step(0)
    assert "found the agent: True" in result.stdout, result.stdout
    assert "fd/1 refused" in result.stdout and "mem refused" in result.stdout, result.stdout
    assert "ALL 120 TESTS PASSED" not in result.stdout
    assert result.exit_code == 3 and outcome.state == "TASK_STATE_FAILED"
