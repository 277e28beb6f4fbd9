"""The pieces of the sandbox calls that need no sandbox: the archive entry check, the agent
protocol's spliced base64 lines, and signal names."""

from __future__ import annotations

import base64
import os
import tarfile

import pytest

from corral import agent_protocol as protocol
from corral.errors import InvalidArgument
from gateway.routers.sandbox_calls import tar_problem
from services.executor.sandbox_calls import _signal_number


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    ("member", "words"),
    [
        (entry("../x"), "'..'"),
        (entry("a/../../x"), "'..'"),
        (entry("/etc/x"), "absolute"),
        (entry("l", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link (to '/etc/passwd')"),
        (entry("h", tarfile.LNKTYPE, "x"), "hard link"),
        (entry("d", tarfile.CHRTYPE), "device"),
        (entry("b", tarfile.BLKTYPE), "device"),
        (entry("f", tarfile.FIFOTYPE), "FIFO"),
    ],
)
def test_archive_entries_that_could_escape_are_refused(member: tarfile.TarInfo, words: str) -> None:
    assert words in tar_problem(member)


def test_plain_entries_pass() -> None:
    assert tar_problem(entry("a/b.txt")) == ""
    assert tar_problem(entry("./a", tarfile.DIRTYPE)) == ""
    assert tar_problem(entry("a..b/c..")) == ""  # dots in names are not '..'


def test_large_chunks_are_spliced_into_their_line_and_decode_the_same() -> None:
    data = base64.b64encode(os.urandom(100_000)).decode()
    tricky_path = 'x", "data": "", "y'  # the field's text inside another value is escaped, not matched
    for message in (
        protocol.BytesReply(id=7, path=tricky_path, data=data, size=1, eof=False),
        protocol.WriteBytesRequest(id=8, path=tricky_path, data=data, append=True),
        protocol.StdinRequest(id=9, target=3, data=data),
    ):
        line = protocol.encode(message)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        parsed = protocol.parse_line(line)
        decoded = protocol.decode_reply(parsed) if isinstance(message, protocol.Reply) else protocol.decode_request(parsed)
        assert decoded == message


def test_a_chunk_that_is_not_base64_is_encoded_by_json() -> None:
    odd = 'a"b\\c' * 10_000
    message = protocol.BytesReply(id=1, path="p", data=odd, size=0, eof=True)
    assert protocol.decode_reply(protocol.parse_line(protocol.encode(message))) == message


def test_signal_names() -> None:
    assert _signal_number("SIGTERM") == 15 and _signal_number("term") == 15 and _signal_number("9") == 9
    with pytest.raises(InvalidArgument, match="unknown signal 'SIGNOPE'"):
        _signal_number("SIGNOPE")


def test_who_may_make_the_calls() -> None:
    """The public calls: the gateway (a client's key with it) or an admin; the executor's
    side: the scheduler, and for the quick unary calls the gateway (a sandbox's executor, memory or
    an admin cannot reach an agent directly)."""
    from corral.authz import Identity, refusal
    from corral.internal.v1 import executor_pb2
    from corral.v1 import sandbox_pb2

    public = [m.name for m in sandbox_pb2.DESCRIPTOR.services_by_name["SandboxService"].methods if "Sandbox" in m.name]
    assert {"RunSandboxCommand", "StreamSandboxCommand", "ReadSandboxFile", "WriteSandboxFile"} <= set(public)
    for name in public:
        method = f"/corral.v1.SandboxService/{name}"
        assert refusal(method, Identity("gateway", "gateway"), None) is None
        assert refusal(method, Identity("executor", "e1"), None) is not None
    internal = ["RunCommand", "StreamCommand", "GetCommand", "WatchCommand", "WriteCommandStdin", "SignalCommand",
                "ReadFile", "WriteFile", "OperateFile", "RunDesktopAction"]
    assert set(internal) <= {m.name for m in executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"].methods}
    # The quick unary ones also from the gateway, which sends them straight to the executor
    # once the scheduler has routed the caller's key (gateway/call_routes.py).
    direct = {"RunCommand", "GetCommand", "WriteCommandStdin", "SignalCommand", "OperateFile", "RunDesktopAction"}
    for name in internal:
        method = f"/corral.internal.v1.ExecutorService/{name}"
        assert refusal(method, Identity("scheduler", "scheduler"), None) is None
        gateway = refusal(method, Identity("gateway", "gateway"), None)
        assert (gateway is None) == (name in direct), (name, gateway)
        for other in (Identity("executor", "e1"), Identity("memory", "memory"), Identity("admin", "admin"), None):
            assert refusal(method, other, None) is not None, (name, other)
    from corral.authz import GATEWAY_EXECUTOR_RPCS
    from gateway.call_routes import EXECUTOR_RPCS

    assert set(GATEWAY_EXECUTOR_RPCS) == direct == {executor_rpc for executor_rpc, _ in EXECUTOR_RPCS.values()}
