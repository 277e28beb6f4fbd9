"""A long-lived sandbox's interactive calls through the real REST gateway, on both drivers:
commands (result, SSE stream, background handles with stdin, signals and kill), files as
bytes (binary round trips, confinement, tar upload and download), calls beside a running
task, and every call recorded in the sandbox's history and /tasks/agent.log."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_stack import TEST_ENV, start_gateway
from harness import Cluster, docker_unavailable

DRIVERS = ["bubblewrap", pytest.param("docker", marks=pytest.mark.docker)]
FILE_LIMIT = 60 * 1024 * 1024
RAW = {"content-type": "application/octet-stream"}
TAR = {"content-type": "application/x-tar"}


@pytest.fixture(scope="module", params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if name == "docker" and (reason := docker_unavailable()):
        pytest.skip(reason)
    return name


@pytest.fixture(scope="module")
def calls_stack(driver: str) -> Iterator[Cluster]:
    # Under /tmp, not pytest's root-only tmp tree: sandboxes run as an unprivileged host uid.
    data_dir = Path(tempfile.mkdtemp(prefix="corral-calls-test-"))
    data_dir.chmod(0o755)
    cluster = Cluster.new(
        data_dir, **TEST_ENV, CORRAL_SANDBOX_DRIVER=driver, CORRAL_SANDBOX_FILE_MAX_BYTES=str(FILE_LIMIT)
    )
    try:
        for name in ("memory", "scheduler", "executor"):
            getattr(cluster, f"start_{name}")()
        start_gateway(cluster)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def api(calls_stack: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=calls_stack.gateway_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def sandbox(api: httpx.Client) -> Iterator[str]:
    """One sandbox for the module's tests (each works in a directory of its own)."""
    created = api.post("/v1/sandboxes", json={"ttl": 900})
    assert created.status_code == 201, created.text
    sandbox_id: str = created.json()["sandbox_id"]
    yield f"/v1/sandboxes/{sandbox_id}"
    api.delete(f"/v1/sandboxes/{sandbox_id}")


def run(api: httpx.Client, sandbox: str, **body: Any) -> dict[str, Any]:
    reply = api.post(f"{sandbox}/commands", json=body)
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) of an SSE stream, keep-alives skipped."""
    kind = ""
    for line in lines:
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield kind, json.loads(line.removeprefix("data: "))


def test_a_command_returns_its_result(api: httpx.Client, sandbox: str) -> None:
    done = run(api, sandbox, tool="shell", command="pwd; echo $HOME $GREETING; echo oops >&2; exit 3",
               env={"GREETING": "hi"})
    assert done["stdout"] == "/workspace\n/workspace hi\n" and done["stderr"] == "oops\n", done
    assert done["exit_code"] == 3 and done["error"] == "exited with code 3" and not done["timed_out"]
    assert done["duration"] > 0 and done["stdout_truncated"] is False

    run(api, sandbox, command="mkdir -p sub && echo 'print(6 * 7)' > sub/app.py")
    python = run(api, sandbox, tool="python", code="exec(open('app.py').read())", cwd="sub")
    assert (python["stdout"], python["exit_code"]) == ("42\n", 0), python
    typescript = run(api, sandbox, tool="typescript", code="const n: number = 6 * 7; console.log(n);")
    assert (typescript["stdout"], typescript["exit_code"]) == ("42\n", 0), typescript

    slow = run(api, sandbox, command="sleep 30", timeout=0.5)
    assert slow["timed_out"] and slow["exit_code"] is None and "timed out" in slow["error"], slow

    for body, words in [
        ({"tool": "perl", "command": "1"}, "tool"),
        ({"tool": "shell"}, "exactly one of command and code"),
        ({"tool": "shell", "command": "   "}, "empty"),
        ({"tool": "shell", "command": "cat", "stdin": True}, "stdin is for background commands"),
        ({"tool": "shell", "command": "true", "timeout": 1e300}, "timeout"),
        ({"tool": "shell", "command": "echo a\u0000b"}, "command contains a NUL character"),
        ({"tool": "shell", "command": "true", "env": {"X": "a\u0000"}}, "the value of X contains a NUL character"),
    ]:
        refused = api.post(f"{sandbox}/commands", json=body)
        assert refused.status_code == 400 and words in refused.text, (body, refused.text)


def test_streamed_output_arrives_as_it_is_produced(api: httpx.Client, sandbox: str) -> None:
    # The command waits, after each line, for a file the test writes only once it has the
    # line: each line must have reached the client, as an event of its own, while it ran.
    script = "for i in 1 2 3; do echo line-$i; while [ ! -f stream/go-$i ]; do sleep 0.05; done; done; echo end >&2"
    run(api, sandbox, command="rm -rf stream; mkdir stream")
    seen: list[tuple[str, dict[str, Any]]] = []
    with api.stream("POST", f"{sandbox}/commands", json={"command": script, "timeout": 60},
                    headers={"accept": "text/event-stream"}) as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        for kind, data in sse_events(stream.iter_lines()):
            seen.append((kind, data))
            if kind == "stdout":
                number = data["data"].strip().removeprefix("line-")
                written = api.put(f"{sandbox}/files", params={"path": f"stream/go-{number}"}, content=b"", headers=RAW)
                assert written.status_code == 200, written.text
            if kind == "exit":
                break
    assert [k for k, _ in seen] == ["start", "stdout", "stdout", "stdout", "stderr", "exit"], seen
    assert [d["data"] for k, d in seen if k == "stdout"] == ["line-1\n", "line-2\n", "line-3\n"]
    assert seen[-1][1]["exit_code"] == 0 and "stdout" not in seen[-1][1]

    # ?stream=true does the same.
    with api.stream("POST", f"{sandbox}/commands?stream=true", json={"command": "echo a; exit 4"}) as stream:
        events = list(sse_events(stream.iter_lines()))
    assert [k for k, _ in events] == ["start", "stdout", "exit"] and events[-1][1]["exit_code"] == 4, events


def test_background_command_with_stdin_signal_and_kill(api: httpx.Client, sandbox: str) -> None:
    started = api.post(f"{sandbox}/commands", json={"command": "cat", "background": True, "stdin": True})
    assert started.status_code == 202, started.text
    command = f"{sandbox}/commands/{started.json()['command_id']}"
    assert api.get(command).json()["state"] == "running"

    sent = api.post(f"{command}/stdin", content=b"hello\x00world\n", headers=RAW)
    assert sent.status_code == 204, sent.text
    with api.stream("GET", f"{command}/output", headers={"accept": "text/event-stream"}) as stream:
        first = next(sse_events(stream.iter_lines()))
    assert first == ("stdout", {"data": "hello\x00world\n"}), first
    buffered = api.get(f"{command}/output").json()
    assert buffered["stdout"] == "hello\x00world\n" and buffered["state"] == "running", buffered

    killed = api.delete(command)
    assert killed.status_code == 204, killed.text
    with api.stream("GET", f"{command}/output?stream=true") as stream:
        events = list(sse_events(stream.iter_lines()))
    assert events[-1][0] == "exit" and events[-1][1]["killed"] is True, events
    assert api.get(command).json()["state"] == "exited"
    assert api.post(f"{command}/stdin", content=b"more", headers=RAW).status_code == 409

    # Closing stdin ends `cat` by itself; a signal reaches the command's trap.
    closing = api.post(f"{sandbox}/commands", json={"command": "cat; echo closed", "background": True, "stdin": True}).json()
    closing_path = f"{sandbox}/commands/{closing['command_id']}"
    assert api.post(f"{closing_path}/stdin?close=true", content=b"last\n", headers=RAW).status_code == 204
    with api.stream("GET", f"{closing_path}/output?stream=true") as stream:
        events = list(sse_events(stream.iter_lines()))
    assert "".join(d["data"] for k, d in events if k == "stdout") == "last\nclosed\n"
    assert events[-1][1]["exit_code"] == 0, events

    trapped = api.post(f"{sandbox}/commands", json={
        "command": "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done", "background": True,
    }).json()
    trapped_path = f"{sandbox}/commands/{trapped['command_id']}"
    with api.stream("GET", f"{trapped_path}/output?stream=true") as stream:
        assert next(sse_events(stream.iter_lines())) == ("stdout", {"data": "ready\n"})
    assert api.post(f"{trapped_path}/signal", json={"signal": "SIGTERM"}).status_code == 204
    with api.stream("GET", f"{trapped_path}/output?stream=true") as stream:
        events = list(sse_events(stream.iter_lines()))
    assert events[-1][1]["exit_code"] == 7 and "got-term\n" in [d["data"] for k, d in events if k == "stdout"], events

    assert api.post(f"{trapped_path}/signal", json={"signal": "SIGNOPE"}).status_code == 400
    assert api.get(f"{sandbox}/commands/cmd-999999").status_code == 404


def test_files_round_trip_as_bytes(api: httpx.Client, sandbox: str, driver: str) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7) + b"\x00" * 1000 + b"\xff\xfe"  # several chunks, NULs
    written = api.put(f"{sandbox}/files", params={"path": "bin/data.bin"}, content=data, headers=RAW)
    assert written.status_code == 200, written.text
    assert written.json()["path"] == "/workspace/bin/data.bin" and written.json()["size"] == len(data)
    read = api.get(f"{sandbox}/files", params={"path": "/workspace/bin/data.bin"})
    assert read.status_code == 200 and read.headers["content-type"] == "application/octet-stream"
    assert read.content == data
    # What a command sees is the same file.
    assert run(api, sandbox, command="sha256sum bin/data.bin | cut -d' ' -f1")["stdout"].strip() == (
        __import__("hashlib").sha256(data).hexdigest()
    )
    empty = api.put(f"{sandbox}/files", params={"path": "bin/empty"}, content=b"", headers=RAW)
    assert empty.status_code == 200 and api.get(f"{sandbox}/files", params={"path": "bin/empty"}).content == b""

    if driver == "bubblewrap":  # 50 MB once: enough to show chunking holds, and bounded in time
        big = os.urandom(50 * 1024 * 1024)
        assert api.put(f"{sandbox}/files", params={"path": "/tmp/big.bin"}, content=big, headers=RAW).status_code == 200
        with api.stream("GET", f"{sandbox}/files", params={"path": "/tmp/big.bin"}) as stream:
            assert stream.status_code == 200 and int(stream.headers["content-length"]) == len(big)
            back = b"".join(stream.iter_bytes())
        assert back == big
        api.delete(f"{sandbox}/files", params={"path": "/tmp/big.bin"})

        # A body that turns out too large as it streams in (no Content-Length) is refused and
        # leaves the file as it was: the new content is written beside it, renamed only when whole.
        api.put(f"{sandbox}/files", params={"path": "bin/keep.txt"}, content=b"old", headers=RAW)
        chunk = b"\x01" * (1024 * 1024)
        streamed = api.put(f"{sandbox}/files", params={"path": "bin/keep.txt"}, headers=RAW,
                           content=(chunk for _ in range(FILE_LIMIT // len(chunk) + 1)))
        assert streamed.status_code == 413, streamed.text
        assert api.get(f"{sandbox}/files", params={"path": "bin/keep.txt"}).content == b"old"
        names = [e["name"] for e in api.get(f"{sandbox}/files/list", params={"path": "bin"}).json()["entries"]]
        assert names == ["data.bin", "empty", "keep.txt"], names

    too_big = api.put(f"{sandbox}/files", params={"path": "huge"}, content=b"\0" * (FILE_LIMIT + 1), headers=RAW)
    assert too_big.status_code == 413 and str(FILE_LIMIT) in too_big.text, too_big.text


def test_file_operations_and_confinement(api: httpx.Client, sandbox: str) -> None:
    assert api.post(f"{sandbox}/files/mkdir", json={"path": "ops/a/b"}).json()["path"] == "/workspace/ops/a/b"
    api.put(f"{sandbox}/files", params={"path": "ops/a/one.txt"}, content=b"1", headers=RAW)
    listing = api.get(f"{sandbox}/files/list", params={"path": "ops/a"}).json()
    assert [(e["name"], e["type"]) for e in listing["entries"]] == [("b", "directory"), ("one.txt", "file")], listing
    stat = api.get(f"{sandbox}/files/stat", params={"path": "ops/a/one.txt"}).json()
    assert (stat["type"], stat["size"], stat["path"]) == ("file", 1, "/workspace/ops/a/one.txt")
    renamed = api.post(f"{sandbox}/files/rename", json={"from": "ops/a/one.txt", "to": "ops/two.txt"})
    assert renamed.status_code == 200 and renamed.json()["path"] == "/workspace/ops/two.txt", renamed.text
    assert api.get(f"{sandbox}/files", params={"path": "ops/two.txt"}).content == b"1"
    assert api.delete(f"{sandbox}/files", params={"path": "ops/a"}).status_code == 200
    assert [e["name"] for e in api.get(f"{sandbox}/files/list", params={"path": "ops"}).json()["entries"]] == ["two.txt"]
    missing = api.get(f"{sandbox}/files/stat", params={"path": "ops/a"})
    assert missing.status_code == 404 and missing.json()["error"] == {"code": "not_found", "message": "no such file or directory: ops/a"}
    # /tmp is reachable, as from file steps.
    api.put(f"{sandbox}/files", params={"path": "/tmp/t.txt"}, content=b"tmp", headers=RAW)
    assert run(api, sandbox, command="cat /tmp/t.txt")["stdout"] == "tmp"

    # Out of the workspace and /tmp: refused, links included; removing a link removes the link.
    run(api, sandbox, command="ln -sf /etc/passwd ops/passwd-link && ln -sfn /etc ops/etc-link")
    for path in ("../x", "/etc/passwd", "ops/passwd-link", "ops/etc-link/hostname", "/workspace/../etc/passwd"):
        refused = api.get(f"{sandbox}/files", params={"path": path})
        assert refused.status_code == 400 and "refused path" in refused.text, (path, refused.text)
        put = api.put(f"{sandbox}/files", params={"path": path}, content=b"x", headers=RAW)
        assert put.status_code == 400, (path, put.text)
    for root in (".", "/workspace", "/tmp"):
        assert api.delete(f"{sandbox}/files", params={"path": root}).status_code == 400, root
    assert api.delete(f"{sandbox}/files", params={"path": "ops/passwd-link"}).status_code == 200
    assert run(api, sandbox, command="test -f /etc/passwd && echo intact")["stdout"] == "intact\n"
    escaped = api.post(f"{sandbox}/files/rename", json={"from": "ops/two.txt", "to": "/etc/two.txt"})
    assert escaped.status_code == 400 and "refused path" in escaped.text


def tar_of(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            archive.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def test_tar_upload_is_extracted_safely_and_download_gives_it_back(api: httpx.Client, sandbox: str) -> None:
    good = tar_of((entry("pkg", tarfile.DIRTYPE), b""), (entry("pkg/a.txt"), b"alpha"), (entry("pkg/sub/b.bin"), b"\x00\x01"))
    uploaded = api.post(f"{sandbox}/files/upload", params={"path": "up"}, content=good, headers=TAR)
    assert uploaded.status_code == 200, uploaded.text
    assert (uploaded.json()["files"], uploaded.json()["bytes"]) == (2, 7)
    assert api.get(f"{sandbox}/files", params={"path": "up/pkg/sub/b.bin"}).content == b"\x00\x01"

    for bad, words in [
        (entry("../escape.txt"), "'..'"),
        (entry("ok/../../escape.txt"), "'..'"),
        (entry("/etc/escape.txt"), "absolute"),
        (entry("link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (entry("hard", tarfile.LNKTYPE, "/etc/passwd"), "hard link"),
        (entry("dev", tarfile.CHRTYPE), "device"),
    ]:
        archive = tar_of((entry("first.txt"), b"written?"), (bad, b"evil"))
        refused = api.post(f"{sandbox}/files/upload", params={"path": "bad"}, content=archive, headers=TAR)
        assert refused.status_code == 400, (bad.name, refused.text)
        message = refused.json()["error"]["message"]
        assert repr(bad.name) in message and words in message and "nothing was extracted" in message, message
    assert api.get(f"{sandbox}/files/stat", params={"path": "bad"}).status_code == 404  # never made
    assert api.post(f"{sandbox}/files/upload", content=b"not a tar", headers=TAR).status_code == 400

    # A zip the same way; its links (a mode in the entry's attributes) refused too.
    def zip_of(*entries: tuple[str, bytes, int]) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data, mode in entries:
                info = zipfile.ZipInfo(name)
                info.external_attr = mode << 16
                archive.writestr(info, data)
        return buffer.getvalue()

    zipped = zip_of(("z/one.txt", b"one", 0o100644), ("z/two/", b"", 0o040755))
    unzipped = api.post(f"{sandbox}/files/upload", params={"path": "up"}, content=zipped, headers={"content-type": "application/zip"})
    assert unzipped.status_code == 200 and (unzipped.json()["files"], unzipped.json()["directories"]) == (1, 1), unzipped.text
    assert api.get(f"{sandbox}/files", params={"path": "up/z/one.txt"}).content == b"one"
    for name, mode, words in [("../z.txt", 0o100644, "'..'"), ("zl", 0o120777, "symbolic link")]:
        bad_zip = zip_of(("first.txt", b"x", 0o100644), (name, b"/etc/passwd", mode))
        refused = api.post(f"{sandbox}/files/upload", params={"path": "badzip"}, content=bad_zip, headers={"content-type": "application/zip"})
        assert refused.status_code == 400 and repr(name) in refused.text and words in refused.text, refused.text
    assert api.get(f"{sandbox}/files/stat", params={"path": "badzip"}).status_code == 404
    # A small compressed body that would unpack past the limit is refused before extracting.
    bomb = io.BytesIO()
    with tarfile.open(fileobj=bomb, mode="w:gz") as archive:
        info = entry("zeros.bin")
        info.size = FILE_LIMIT + 1
        archive.addfile(info, io.BytesIO(bytes(FILE_LIMIT + 1)))
    bombed = api.post(f"{sandbox}/files/upload", params={"path": "bomb"}, content=bomb.getvalue(), headers=TAR)
    assert bombed.status_code == 413 and "unpacks to more than" in bombed.text, bombed.text

    downloaded = api.get(f"{sandbox}/files/download", params={"path": "up"})
    assert downloaded.status_code == 200 and downloaded.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(downloaded.content)) as archive:
        files = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert files == {"pkg/a.txt": b"alpha", "pkg/sub/b.bin": b"\x00\x01", "z/one.txt": b"one"}, files


def test_calls_run_beside_a_task_and_are_recorded(api: httpx.Client, sandbox: str, calls_stack: Cluster) -> None:
    sandbox_id = sandbox.rsplit("/", 1)[1]
    # A task waiting in the sandbox for a file only a call makes: the call must not wait for it.
    task = api.post("/v1/tasks", json={"sandbox_id": sandbox_id, "steps": [
        {"tool": "shell", "command": "until [ -f beside/go ]; do sleep 0.05; done; echo task-saw-it", "timeout": 60},
    ]})
    assert task.status_code == 201, task.text
    task_id = task.json()["task_id"]
    assert api.post(f"{sandbox}/files/mkdir", json={"path": "beside"}).status_code == 200
    api.put(f"{sandbox}/files", params={"path": "beside/note"}, content=b"n", headers=RAW)
    assert api.get(f"{sandbox}/files", params={"path": "beside/note"}).content == b"n"
    run(api, sandbox, command="mkdir -p beside && echo call-marker-7 && touch beside/go")
    for _ in range(600):
        status = api.get(f"/v1/tasks/{task_id}").json()
        if status["status"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.1)
    assert status["status"] == "completed" and status["steps"][0]["stdout"] == "task-saw-it\n", status

    # The call's history entry (written in the background) and its agent.log lines.
    for _ in range(100):
        events = api.get(f"{sandbox}/history?limit=10000").json()["events"]
        marked = [e for e in events if "call-marker-7" in e["action"]]
        if marked:
            break
        time.sleep(0.1)
    assert marked and marked[0]["tool"] == "shell" and marked[0]["stdout"] == "call-marker-7\n", events[-3:]
    assert {"write_file", "read_file", "mkdir"} <= {e["tool"] for e in events}
    log_path = calls_stack.data_dir / "sandboxes" / sandbox_id / "tasks" / "agent.log"
    for _ in range(100):  # written a moment after the call, with the calls around it
        log = log_path.read_text() if log_path.exists() else ""
        if "call-marker-7" in log:
            break
        time.sleep(0.1)
    assert "call shell: mkdir -p beside && echo call-marker-7" in log and "stdout | call-marker-7" in log, log[-2000:]


def test_unknown_sandbox_and_no_desktop(api: httpx.Client, sandbox: str) -> None:
    unknown = "/v1/sandboxes/" + "0" * 32
    assert api.post(f"{unknown}/commands", json={"command": "true"}).status_code == 404
    assert api.get(f"{unknown}/files", params={"path": "x"}).status_code == 404
    assert api.put(f"{unknown}/files", params={"path": "x"}, content=b"x", headers=RAW).status_code == 404
    assert api.get(f"{unknown}/files/list").status_code == 404
    for reply in (api.get(f"{sandbox}/desktop/screenshot"), api.post(f"{sandbox}/desktop/actions", json={"action": "click", "x": 1, "y": 1})):
        assert reply.status_code == 409 and "has no desktop (create it with desktop: true)" in reply.text, reply.text
    bad_action = api.post(f"{sandbox}/desktop/actions", json={"action": "fly"})
    assert bad_action.status_code == 400, bad_action.text

    # A deleted sandbox says so (after its calls were routed to its executor once).
    other = api.post("/v1/sandboxes", json={"ttl": 60}).json()["sandbox_id"]
    assert api.post(f"/v1/sandboxes/{other}/commands", json={"command": "true"}).status_code == 200
    api.delete(f"/v1/sandboxes/{other}")
    gone = api.post(f"/v1/sandboxes/{other}/commands", json={"command": "true"})
    assert gone.status_code == 409 and f"sandbox {other} is deleted" in gone.text, gone.text


def test_raw_bodies_stay_out_of_a_web_pages_reach(api: httpx.Client, sandbox: str) -> None:
    """Raw bodies are let through the browser guard for the byte routes only, and only in
    types a page cannot send without a CORS preflight (which the gateway never grants)."""
    form_like = api.put(f"{sandbox}/files", params={"path": "page.txt"}, content=b"x", headers={"content-type": "text/plain"})
    assert form_like.status_code == 415, form_like.text
    cross_site = api.put(f"{sandbox}/files", params={"path": "page.txt"}, content=b"x",
                         headers={**RAW, "origin": "http://evil.example"})
    assert cross_site.status_code == 403, cross_site.text
    elsewhere = api.post(f"{sandbox}/commands", content=b'{"command": "true"}', headers=RAW)
    assert elsewhere.status_code == 415, elsewhere.text
    assert api.get(f"{sandbox}/files/stat", params={"path": "page.txt"}).status_code == 404  # never written
