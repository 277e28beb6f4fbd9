"""Both step agents, the Python one (sandbox/runtime/agent.py) and the compiled one
(sandbox/agent/, which serves the hot path and hands the rest to the Python one), answer every
request of agent_protocol.py alike: the same replies, field for field, to the same requests.

The requests are every kind protocol.REQUESTS has (a new one fails the test until it is here),
valid and refused, plus, driven from each request type's declared fields, one of each field with
a value of the wrong type and one with each required field missing. Each agent runs as a plain
process in a directory of its own (no sandbox: isolation is the other tests' subject); what
differs between two runs (pids, the directory, mtimes) is taken out before comparing."""

from __future__ import annotations

import base64
import json
import os
import queue
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from corral import agent_protocol as protocol

RUNTIME = Path(__file__).resolve().parents[3] / "sandbox" / "runtime"
COMPILED = RUNTIME / protocol.COMPILED_AGENT_NAME
REPLY_TIMEOUT = 20.0

pytestmark = pytest.mark.timeout(120)


class Agent:
    """One agent process and the replies it sent, by request id."""

    def __init__(self, command: list[str], home: Path) -> None:
        home.mkdir()
        (home / "sub").mkdir()
        (home / "a.txt").write_text("hello\n")
        self.home = home
        self.process = subprocess.Popen(
            command, cwd=home, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", "HOME": str(home), "CORRAL_AGENT_SCRIPT_DIR": str(home / ".scripts")},
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.replies: dict[int, list[dict[str, Any]]] = {}
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self.lines.get(timeout=REPLY_TIMEOUT)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(json.loads(line))

    def send(self, request: dict[str, Any] | str) -> None:
        assert self.process.stdin is not None
        line = request if isinstance(request, str) else json.dumps(request)
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def until(self, request_id: int, kind: str, count: int = 1) -> None:
        """Collects replies until `count` of type `kind` for `request_id` have come."""
        while sum(r["type"] == kind for r in self.replies.get(request_id, [])) < count:
            reply = self.lines.get(timeout=REPLY_TIMEOUT)
            self.replies.setdefault(reply["id"], []).append(reply)

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=REPLY_TIMEOUT)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# (request, the reply type that ends it, or None for a request answered by nothing). Ids are
# the list's positions; `target` -1 / -2 name the run one / two places above.
SCRIPT: list[tuple[dict[str, Any], str | None]] = [
    ({"op": "run", "kind": "shell", "code": "echo out; echo err >&2; printf '\\377\\342\\202'; exit 3"}, "exit"),
    ({"op": "run", "kind": "python", "code": "print('\\u00e9\\U0001f600')"}, "exit"),
    ({"op": "run", "kind": "argv", "argv": ["printf", "%s|", "a b", "c"]}, "exit"),
    ({"op": "run", "kind": "argv", "argv": []}, "exit"),
    ({"op": "run", "kind": "argv", "argv": ["no-such-program"]}, "exit"),
    ({"op": "run", "kind": "shell", "code": "pwd", "cwd": "no-such-directory"}, "exit"),
    ({"op": "run", "kind": "shell", "code": "pwd", "cwd": "sub"}, "exit"),
    ({"op": "run", "kind": "shell", "code": "echo \"$A|$PATH\"", "env": {"A": "b"}}, "exit"),
    ({"op": "run", "kind": "shell", "code": "yes | head -c 100000; echo e >&2", "max_output_bytes": 7}, "exit"),
    ({"op": "run", "kind": "shell", "code": "printf 'ab\\342\\202'", "max_output_bytes": 3}, "exit"),
    ({"op": "run", "kind": "shell", "code": "exec sleep 30", "timeout": 0.3}, "exit"),
    ({"op": "run", "kind": "shell", "code": "ulimit -p", "limits": {"max_processes": 50}}, "exit"),
    # stdin: a run reading it, fed, then closed.
    ({"op": "run", "kind": "shell", "code": "cat; echo done", "stdin": True}, None),
    ({"op": "stdin", "target": -1, "data": b64(b"fed\n")}, "done"),
    ({"op": "stdin", "target": -2, "data": b64(b"more\n"), "close": True}, "done"),
    ({"op": "stdin", "target": 999, "data": b64(b"x")}, "error"),
    ({"op": "stdin", "target": 999, "data": "a"}, "error"),
    # signal and kill: runs that would sleep.
    # (their first output: the process has started, and it is it that a signal reaches)
    ({"op": "run", "kind": "shell", "code": "echo started; exec sleep 30"}, "output"),
    ({"op": "signal", "target": -1, "signal": 15}, "done"),
    ({"op": "signal", "target": 999, "signal": 15}, "error"),
    ({"op": "run", "kind": "shell", "code": "echo started; exec sleep 30"}, "output"),
    ({"op": "signal", "target": -1, "signal": 999}, "error"),
    ({"op": "stdin", "target": -2, "data": b64(b"x")}, "error"),
    ({"op": "kill", "target": -3}, None),
    ({"op": "kill", "target": 999}, None),
    # the file operations (the compiled agent hands them to the Python one)
    ({"op": "read_file", "path": "a.txt"}, "file"),
    ({"op": "read_file", "path": "../etc/passwd"}, "error"),
    ({"op": "write_file", "path": "sub/b.txt", "content": "B"}, "file"),
    ({"op": "list_files", "path": "sub"}, "files"),
    ({"op": "read_bytes", "path": "a.txt", "offset": 1, "length": 3}, "bytes"),
    ({"op": "write_bytes", "path": "c.bin", "data": b64(b"\x00\x01")}, "file"),
    ({"op": "stat", "path": "c.bin"}, "stat"),
    ({"op": "mkdir", "path": "d/e"}, "done"),
    ({"op": "rename", "path": "c.bin", "target": "d/e/c.bin"}, "done"),
    ({"op": "remove", "path": "d"}, "done"),
    ({"op": "stat", "path": "d"}, "error"),
    # chdir: both agents (and the compiled one's Python helper, running by now) move.
    ({"op": "chdir", "path": "sub", "env": {"MOVED": "yes"}}, "chdir"),
    ({"op": "read_file", "path": "b.txt"}, "file"),
    ({"op": "run", "kind": "shell", "code": "pwd"}, "exit"),
    ({"op": "chdir", "path": "no-such-directory"}, "error"),
    # malformed lines
    ("not json", "error"),
    ("[1, 2]", "error"),
    ({"op": "no-such-op"}, "error"),
    ({"op": "run", "kind": "cobol"}, "error"),
]
# Every request kind is in the script.
COVERED = {request["op"] for request, _ in SCRIPT if isinstance(request, dict)} - {"no-such-op"}

WRONG_VALUES = {"int": "1", "float": "1.5", "bool": 1, "str": 1, "RunKind": "cobol", "ProcessLimits": 1}


def wrong_value(hint: str) -> Any:
    """A value that does not have the type `hint` (a field annotation, as written)."""
    if hint.startswith(("list[", "dict[")):
        return "not a container"
    return WRONG_VALUES.get(hint.split(" |")[0], [])


def schema_requests() -> list[tuple[dict[str, Any], str | None]]:
    """For each request type and each of its fields: the field with a wrong type; and each
    request with one required field missing."""
    made: list[tuple[dict[str, Any], str | None]] = []
    for op, kind in sorted(protocol.REQUESTS.items()):
        fields = [(name, hint, default) for name, hint, default in kind._fields if name != "id"]
        required = {name: "x" if hint == "str" else ("shell" if hint == "RunKind" else 1) for name, hint, default in fields if default is protocol._REQUIRED}
        for name, hint, _ in fields:
            made.append(({"op": op, **required, name: wrong_value(hint)}, "error"))
        for name in required:
            made.append(({"op": op, **{k: v for k, v in required.items() if k != name}}, "error"))
    return made


def play(agent: Agent, script: list[tuple[dict[str, Any] | str, str | None]]) -> dict[int, list[dict[str, Any]]]:
    awaited: dict[tuple[int, str], int] = {}
    for request_id, (request, ends_with) in enumerate(script, start=1):
        if isinstance(request, dict):
            request = {**request, "id": request_id}
            if isinstance(request.get("target"), int) and request["target"] < 0:
                request["target"] = request_id + request["target"]
        agent.send(request)
        if ends_with is not None:
            # A malformed line's error carries the id it could read, or 0.
            key = (request_id if isinstance(request, dict) else 0, ends_with)
            awaited[key] = awaited.get(key, 0) + 1
            agent.until(*key, awaited[key])
    # The runs left to end (signalled, killed): their exits.
    for request_id, (request, ends_with) in enumerate(script, start=1):
        if isinstance(request, dict) and request.get("op") == "run" and ends_with != "error":
            agent.until(request_id, "exit")
    return agent.replies


def normalized(replies: dict[int, list[dict[str, Any]]], home: Path) -> dict[int, Any]:
    """Each request's replies, the output of a run joined per stream (its chunks may differ)."""
    text = json.dumps(replies).replace(str(home), "<home>")
    result: dict[int, Any] = {}
    for request_id, items in json.loads(text).items():
        streams = {"stdout": "", "stderr": ""}
        others = []
        for reply in items:
            if reply["type"] == "output":
                streams[reply["stream"]] += reply["data"]
            else:
                reply.pop("mtime", None)
                if isinstance(reply.get("entry"), dict):
                    reply["entry"].pop("mtime", None)
                for entry in reply.get("entries", []):
                    entry.pop("mtime", None)
                others.append(reply)
        result[int(request_id)] = {"output": streams, "replies": others}
    return result


def test_the_script_covers_every_request_kind() -> None:
    assert set(protocol.REQUESTS) == COVERED


@pytest.mark.parametrize("script", ["operations", "schema"])
def test_both_agents_answer_every_request_alike(tmp_path: Path, script: str) -> None:
    if not (COMPILED.is_file() and os.access(COMPILED, os.X_OK)):
        pytest.fail(f"{COMPILED} is not built: run scripts/build-agent (scripts/bootstrap does)")
    requests = SCRIPT if script == "operations" else schema_requests()
    seen = {}
    for name, command in {
        "python": [*protocol.AGENT_COMMAND[:-1], str(RUNTIME / "agent.py")],
        "compiled": [str(COMPILED), str(RUNTIME / "agent.py")],
    }.items():
        agent = Agent(command, tmp_path / name)
        try:
            assert agent.ready["type"] == "ready" and agent.ready["protocol"] == protocol.PROTOCOL_VERSION
            assert agent.ready["pid"] == agent.process.pid
            seen[name] = normalized(play(agent, requests), agent.home)
        finally:
            agent.close()
    assert seen["compiled"] == seen["python"]
    if script == "operations":
        # What the script is about happened (a sample): the runs ran, the file was moved.
        first = seen["python"][1]
        assert first["output"] == {"stdout": "out\n\ufffd\ufffd", "stderr": "err\n"} and first["replies"][0]["exit_code"] == 3
        assert seen["python"][14]["replies"] == [{"type": "done", "id": 14, "path": ""}]
        assert seen["python"][13]["output"]["stdout"] == "fed\nmore\ndone\n"
