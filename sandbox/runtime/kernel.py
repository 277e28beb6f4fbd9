"""Code contexts: long-lived Jupyter kernels in the sandbox, and running code in them.

Run as a sandbox command (the gateway's /contexts routes send it), it answers JSON on stdout:

    python3 -I /app/kernel.py start                  -> {"context_id", "language", "cwd"} (its cwd: this one's)
    python3 -I /app/kernel.py run ID [--timeout S]   (the code: stdin, or CORRAL_CELL, see below)
        -> {"results": [...], "logs": {"stdout": [...], "stderr": [...]}, "error": ..., "execution_count"}
    python3 -I /app/kernel.py stop ID                -> {"context_id", "stopped": true}

The kernel (ipykernel, from the runtime's venv, whose matplotlib draws inline as PNG) is a
process of its own session, so it outlives the command that started it; it talks to this
client over unix sockets in its context directory (transport ipc), never over the network.
Everything stays inside the sandbox: the host only reads the JSON this prints.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from typing import Any

CONTEXTS_DIR = "/tmp/.corral/contexts"
CONTEXT_ID = re.compile(r"^[0-9a-f]{32}$")
START_TIMEOUT = 60.0
# Mime types with a field of their own in a result (E2B's names); others go to `extra`.
RESULT_FIELDS = {
    "text/plain": "text", "text/html": "html", "text/markdown": "markdown", "image/svg+xml": "svg",
    "image/png": "png", "image/jpeg": "jpeg", "application/pdf": "pdf", "text/latex": "latex",
    "application/json": "json", "application/javascript": "javascript",
}
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ContextError(Exception):
    """A failure the caller is told of, by kind: not_found, dead, or failed."""

    def __init__(self, message: str, kind: str = "failed") -> None:
        super().__init__(message)
        self.kind = kind


def _desktop() -> Any:
    """desktop.py beside this file (not on sys.path under `python3 -I`): runtime_python, spawn."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "desktop.py")
    spec = importlib.util.spec_from_file_location("corral_desktop", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def context_dir(context_id: str) -> str:
    if not CONTEXT_ID.match(context_id):
        raise ContextError(f"not a context id: {context_id!r}", "not_found")
    path = os.path.join(CONTEXTS_DIR, context_id)
    if not os.path.isfile(os.path.join(path, "kernel.json")):
        raise ContextError(f"unknown code context {context_id} (never created, or stopped)", "not_found")
    return path


def start() -> dict[str, Any]:
    from jupyter_client.connect import write_connection_file  # type: ignore[import-not-found]  # the runtime venv

    desktop = _desktop()
    context_id = secrets.token_hex(16)
    path = os.path.join(CONTEXTS_DIR, context_id)
    os.makedirs(path, mode=0o700)
    connection = os.path.join(path, "kernel.json")
    # Signed messages, as Jupyter signs its own kernels'.
    write_connection_file(connection, transport="ipc", ip=os.path.join(path, "k"), key=secrets.token_hex(32).encode())
    env = dict(os.environ)
    shared = os.path.join(CONTEXTS_DIR, ".state")
    env.update(
        IPYTHONDIR=f"{shared}/ipython", MPLCONFIGDIR=f"{shared}/matplotlib",
        JUPYTER_RUNTIME_DIR=f"{shared}/runtime", PYTHONUNBUFFERED="1",
        MPLBACKEND="module://matplotlib_inline.backend_inline",
    )
    proc = desktop.spawn(
        [sys.executable, "-m", "ipykernel_launcher", "-f", connection, "--HistoryManager.enabled=False"],
        os.path.join(path, "kernel.log"), env,
    )
    with open(os.path.join(path, "pid"), "w") as f:
        f.write(str(proc.pid))
    log = os.path.join(path, "kernel.log")
    client = _client(path)
    try:
        # Our own wait: jupyter_client's takes a heartbeat not yet beating for a dead kernel.
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise ContextError(f"the kernel exited with {proc.returncode}; {desktop.tail(log)}")
            if time.monotonic() > deadline:
                proc.kill()
                raise ContextError(f"the kernel did not start within {START_TIMEOUT:g}s; {desktop.tail(log)}")
            client.kernel_info()
            try:
                if client.get_shell_msg(timeout=1.0)["msg_type"] == "kernel_info_reply":
                    break
            except Exception:  # queue.Empty: not up yet
                continue
    finally:
        client.stop_channels()
    return {"context_id": context_id, "language": "python", "cwd": os.getcwd()}


def _client(path: str) -> Any:
    from jupyter_client.blocking import BlockingKernelClient  # type: ignore[import-not-found]

    client = BlockingKernelClient(connection_file=os.path.join(path, "kernel.json"))
    client.load_connection_file()
    client.start_channels(hb=False)  # ipc: a dead kernel is seen by its pid (_alive)
    return client


def _kernel_pid(path: str) -> int:
    with open(os.path.join(path, "pid")) as f:
        return int(f.read().strip())


def _result(content: dict[str, Any], main: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"is_main_result": main}
    extra: dict[str, Any] = {}
    for mime, value in content.get("data", {}).items():
        field = RESULT_FIELDS.get(mime)
        if field is None:
            extra[mime] = value
        else:
            result[field] = value.strip() if mime in ("image/png", "image/jpeg") else value
    if extra:
        result["extra"] = extra
    return result


def run(context_id: str, code: str, timeout: float) -> dict[str, Any]:
    path = context_dir(context_id)
    client = _client(path)
    answer: dict[str, Any] = {"results": [], "logs": {"stdout": [], "stderr": []}, "error": None, "execution_count": None}
    try:
        msg_id = client.execute(code, store_history=True, allow_stdin=False, stop_on_error=True)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # SIGINT is the kernel's KeyboardInterrupt: the context survives, its variables too.
                os.kill(_kernel_pid(path), signal.SIGINT)
                answer["error"] = {"name": "TimeoutError", "value": f"execution exceeded {timeout:g}s and was interrupted",
                                   "traceback": ""}
                break
            try:
                message = client.get_iopub_msg(timeout=min(remaining, 1.0))
            except Exception:  # queue.Empty: nothing yet; is the kernel still there?
                if not _alive(path):
                    raise ContextError(
                        "the context's kernel has died (its memory ran out, or it was killed)", "dead"
                    ) from None
                continue
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                answer["logs"]["stdout" if content["name"] == "stdout" else "stderr"].append(content["text"])
            elif kind in ("execute_result", "display_data"):
                answer["results"].append(_result(content, kind == "execute_result"))
            elif kind == "error":
                answer["error"] = {"name": content["ename"], "value": content["evalue"],
                                   "traceback": ANSI.sub("", "\n".join(content["traceback"]))}
            elif kind == "execute_input":
                answer["execution_count"] = content.get("execution_count")
            elif kind == "status" and content["execution_state"] == "idle":
                break
    finally:
        client.stop_channels()
    return answer


def _alive(path: str) -> bool:
    try:
        os.kill(_kernel_pid(path), 0)
    except (OSError, ValueError):
        return False
    return True


def stop(context_id: str) -> dict[str, Any]:
    path = context_dir(context_id)
    try:
        os.killpg(_kernel_pid(path), signal.SIGKILL)  # its session's group: the kernel and its children
    except (OSError, ValueError):
        pass
    for name in sorted(os.listdir(path)):
        os.unlink(os.path.join(path, name))
    os.rmdir(path)
    return {"context_id": context_id, "stopped": True}


def main(argv: list[str], code: str | None) -> int:
    parser = argparse.ArgumentParser(prog="kernel.py")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("start")
    running = commands.add_parser("run")
    running.add_argument("context_id")
    running.add_argument("--timeout", type=float, default=60.0)
    commands.add_parser("stop").add_argument("context_id")
    args = parser.parse_args(argv)
    try:
        if importlib.util.find_spec("jupyter_client") is None:
            # Started by the sandbox's own python3: the kernel and its client live in the runtime's venv.
            desktop = _desktop()
            try:
                python = desktop.runtime_python()
            except desktop.LaunchError as exc:
                raise ContextError(str(exc)) from None
            rerun = subprocess.run([python, "-I", os.path.abspath(__file__), *argv],
                                   input=None if code is None else code.encode(), check=False)
            return rerun.returncode
        if args.command == "start":
            answer = start()
        elif args.command == "run":
            answer = run(args.context_id, sys.stdin.read() if code is None else code, args.timeout)
        else:
            answer = stop(args.context_id)
    except ContextError as exc:
        print(json.dumps({"failure": str(exc), "kind": exc.kind}))
        return 1
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    # CORRAL_CELL: set by a driver that runs this file with runpy (the gateway's python command).
    sys.exit(main(sys.argv[1:], globals().get("CORRAL_CELL")))
