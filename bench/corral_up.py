"""`corral up` for the benchmarks: the whole embedded system on free loopback ports, with a
temporary data directory, torn down (SIGINT, then kill) when the block ends."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def corral_up(
    prefix: str, env: dict[str, str], extra_args: Sequence[str] = (), cwd: Path | None = None
) -> Iterator[str]:
    """Yields the gateway's URL once `corral up` says it is up."""
    with corral_up_process(prefix, env, extra_args, cwd) as (url, _process):
        yield url


@contextmanager
def corral_up_process(
    prefix: str,
    env: dict[str, str],
    extra_args: Sequence[str] = (),
    cwd: Path | None = None,
    data_dir: Path | None = None,
    scheduler_address: str | None = None,
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """corral_up(), with the `corral up` process (whose tree is the whole system); in
    `data_dir` (made and removed here when None) with the scheduler on `scheduler_address`."""
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix=prefix))
    data_dir.chmod(0o755)
    port = free_port()
    scheduler_address = scheduler_address or f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "up", "--quiet", "--data-dir", str(data_dir),
         "--scheduler-address", scheduler_address, "--memory-address", f"127.0.0.1:{free_port()}",
         "--executor-address", f"127.0.0.1:{free_port()}", "--gateway-port", str(port), *extra_args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
    )
    ready = threading.Event()
    output: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if "Corral is up." in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        ready.wait(180)
        if process.poll() is not None or not any("Corral is up." in line for line in output):
            raise SystemExit("corral up did not start:\n" + "".join(output))
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(data_dir, ignore_errors=True)
