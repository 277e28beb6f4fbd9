"""Starts a sandbox's desktop stack or its Jupyter Lab, in the background, and says where.

    python3 /app/desktop.py desktop [--width 1024 --height 768]
    python3 /app/desktop.py jupyter --base-url /v1/sandboxes/ID/jupyter/ [--root /tasks]

Run by the executor as an ordinary process step (so it works the same with every sandbox
driver). The services it starts get their own sessions and outlive it; it returns once they
answer, printing one JSON line: {"display": ":0", "run_dir": "/run/corral", ...}. Running it
again finds them running and returns at once. Unix sockets go in the run directory
($CORRAL_RUN_DIR, default /run/corral), which the executor's host sees too:
  gui.sock       the gui service (gRPC), vnc.sock and vnc-view.sock (x11vnc, full control
  and view-only), jupyter.sock (Jupyter Lab, HTTP).
The sockets are owner- and group-connectable (mode 0660/0770, group: the sandbox user's, 1000):
root on the host reaches them anyway; a gateway running as another user (the compose
deployment's) needs that group as a supplementary one. Others cannot connect.
Standard library only: it runs on the sandbox's system Python.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable

RUN_DIR = os.environ.get("CORRAL_RUN_DIR", "/run/corral")
STATE_DIR = "/tmp/.corral/desktop"
# The interpreter with grpcio, python-xlib, Pillow and Jupyter: bubblewrap mounts the runtime's
# venv at /app/.venv, the docker image has /opt/corral-venv.
PYTHONS = ("/app/.venv/bin/python", "/opt/corral-venv/bin/python")
# Where the gui service's package (services.gui + corral.v1 stubs) is mounted or copied.
SOURCE_DIR = os.environ.get("CORRAL_SOURCE_DIR", "/opt/corral")
START_TIMEOUT = float(os.environ.get("CORRAL_DESKTOP_TIMEOUT", "60"))
# For the processes that create the sockets: group members may connect, others may not.
SOCKET_UMASK = 0o007
NEWS_PLUGIN = "@jupyterlab/apputils-extension:announcements"


class LaunchError(Exception):
    pass


def runtime_python() -> str:
    configured = os.environ.get("CORRAL_RUNTIME_PYTHON")
    for candidate in ([configured] if configured else []) + list(PYTHONS):
        if os.path.exists(candidate):
            return candidate
    raise LaunchError(f"no runtime Python found (looked for {', '.join(PYTHONS)})")


def answers(path: str) -> bool:
    """Whether something accepts connections on the unix socket `path`."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(1)
        try:
            s.connect(path)
        except OSError:
            return False
        return True


def _answers_at(path: str) -> Callable[[], bool]:
    return lambda: answers(path)


def wait_for(
    what: str, check: Callable[[], bool], procs: list[subprocess.Popen[bytes]], log: str
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if check():
            return
        for proc in procs:
            if proc.poll() is not None:
                program = proc.args[0] if isinstance(proc.args, list) else proc.args
                raise LaunchError(f"{what}: {program!s} exited with {proc.returncode}; {tail(log)}")
        time.sleep(0.05)
    raise LaunchError(f"{what} did not start within {START_TIMEOUT:g}s; {tail(log)}")


def tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 1500))
            return "log: " + f.read().decode("utf-8", "replace").strip()
    except OSError:
        return "no log"


def spawn(
    argv: list[str],
    log: str,
    env: dict[str, str],
    pass_fds: tuple[int, ...] = (),
    cwd: str | None = None,
    umask: int = -1,
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, close_fds=True, pass_fds=pass_fds, cwd=cwd, umask=umask,
        )


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        XDG_CONFIG_HOME=f"{STATE_DIR}/config",
        XDG_CACHE_HOME=f"{STATE_DIR}/cache",
        XDG_DATA_HOME=f"{STATE_DIR}/data",
        XDG_RUNTIME_DIR=f"{STATE_DIR}/xdg-runtime",
    )
    for key in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR"):
        os.makedirs(env[key], mode=0o700, exist_ok=True)
    return env


def start_desktop(width: int, height: int) -> dict[str, object]:
    state_file = os.path.join(RUN_DIR, "desktop.json")
    gui_sock = os.path.join(RUN_DIR, "gui.sock")
    if os.path.exists(state_file) and answers(gui_sock):
        with open(state_file) as f:
            state: dict[str, object] = json.load(f)
        return state
    os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)
    env = base_env()
    log = f"{STATE_DIR}/desktop.log"

    # X clients look for the server's socket here; Xvfb (not root) cannot create it itself.
    os.makedirs("/tmp/.X11-unix", exist_ok=True)
    os.chmod("/tmp/.X11-unix", 0o1777)
    # Xvfb picks a free display and writes its number to the pipe (-displayfd).
    read_fd, write_fd = os.pipe()
    xvfb = spawn(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{width}x{height}x24",
         "-nolisten", "tcp", "-noreset", "-dpi", "96"],
        log, env, pass_fds=(write_fd,),
    )
    os.close(write_fd)
    number = b""
    deadline = time.monotonic() + START_TIMEOUT
    while not number.endswith(b"\n") and time.monotonic() < deadline:
        chunk = os.read(read_fd, 16)
        if not chunk:
            break
        number += chunk
    os.close(read_fd)
    if not number.strip():
        raise LaunchError(f"Xvfb did not start (exit {xvfb.poll()}); {tail(log)}")
    display = f":{int(number)}"
    env["DISPLAY"] = display

    procs = [xvfb]
    procs.append(spawn(["openbox", "--sm-disable"], log, env))
    vnc_sock = os.path.join(RUN_DIR, "vnc.sock")
    view_sock = os.path.join(RUN_DIR, "vnc-view.sock")
    for path, extra in ((vnc_sock, []), (view_sock, ["-viewonly"])):
        if os.path.exists(path):
            os.unlink(path)
        procs.append(spawn(
            ["x11vnc", "-display", display, "-unixsock", path, "-rfbport", "0", "-forever",
             "-shared", "-nopw", "-quiet", "-noxdamage", "-nossl", *extra],
            log, env, umask=SOCKET_UMASK,
        ))
    gui_env = dict(env, PYTHONPATH=SOURCE_DIR, PYTHONDONTWRITEBYTECODE="1")
    procs.append(spawn(
        [runtime_python(), "-m", "services.gui", "--socket", gui_sock, "--display", display],
        log, gui_env, cwd=SOURCE_DIR, umask=SOCKET_UMASK,
    ))
    for path in (gui_sock, vnc_sock, view_sock):
        wait_for(f"the desktop ({os.path.basename(path)})", _answers_at(path), procs, log)
    state = {
        "display": display, "width": width, "height": height, "run_dir": RUN_DIR,
        "gui_socket": gui_sock, "vnc_socket": vnc_sock, "vnc_view_socket": view_sock,
        "pids": [p.pid for p in procs],
    }
    with open(state_file + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(state_file + ".tmp", state_file)
    return state


def jupyter_ready(sock: str) -> bool:
    if not answers(sock):
        return False
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        try:
            s.connect(sock)
            s.sendall(b"GET /api HTTP/1.0\r\nHost: localhost\r\n\r\n")
            return s.recv(12).startswith(b"HTTP/1.")
        except OSError:
            return False


def start_jupyter(base_url: str, root: str) -> dict[str, object]:
    sock = os.path.join(RUN_DIR, "jupyter.sock")
    if jupyter_ready(sock):
        return {"jupyter_socket": sock, "base_url": base_url, "already_running": True}
    base = f"{STATE_DIR}/jupyter"
    os.makedirs(base, mode=0o700, exist_ok=True)
    env = base_env()
    env.update(
        JUPYTER_CONFIG_DIR=f"{base}/config", JUPYTER_DATA_DIR=f"{base}/data",
        JUPYTER_RUNTIME_DIR=f"{base}/runtime", IPYTHONDIR=f"{base}/ipython",
    )
    # No "get Jupyter news?" popup: the sandbox has no network to fetch them with, and nobody
    # to ask (what `jupyter labextension disable` writes).
    labconfig = f"{base}/config/labconfig"
    os.makedirs(labconfig, mode=0o700, exist_ok=True)
    with open(f"{labconfig}/page_config.json", "w") as f:
        json.dump({"disabledExtensions": {NEWS_PLUGIN: True}}, f)
    if os.path.exists(sock):
        os.unlink(sock)
    log = f"{base}/jupyter.log"
    # No token of its own: only the executor's host reaches the socket, and the gateway checks
    # the sandbox's token before proxying.
    proc = spawn(
        [runtime_python(), "-m", "jupyterlab", "--no-browser",
         f"--ServerApp.sock={sock}", "--ServerApp.sock_mode=0660",
         f"--ServerApp.base_url={base_url}", f"--ServerApp.root_dir={root}",
         "--IdentityProvider.token=", "--ServerApp.password=",
         "--ServerApp.disable_check_xsrf=True", "--ServerApp.allow_remote_access=True",
         "--ServerApp.allow_origin=*", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        log, env, cwd=root,
    )
    wait_for("Jupyter Lab", lambda: jupyter_ready(sock), [proc], log)
    return {"jupyter_socket": sock, "base_url": base_url, "pid": proc.pid}


def main() -> int:
    parser = argparse.ArgumentParser(prog="desktop.py")
    commands = parser.add_subparsers(dest="command", required=True)
    desktop = commands.add_parser("desktop")
    desktop.add_argument("--width", type=int, default=1024)
    desktop.add_argument("--height", type=int, default=768)
    jupyter = commands.add_parser("jupyter")
    jupyter.add_argument("--base-url", default="/")
    jupyter.add_argument("--root", default="/tasks")
    args = parser.parse_args()
    try:
        if args.command == "desktop":
            result = start_desktop(args.width, args.height)
        else:
            result = start_jupyter(args.base_url, args.root)
    except LaunchError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
