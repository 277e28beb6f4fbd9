#!/usr/bin/env python3
"""The gateway's memory with slow SSE readers of one large-output task (a benchmark, not a test).

    PYTHONPATH=$PWD .venv/bin/python bench/slow_readers.py                  # 8 readers, 40 MB stdout
    PYTHONPATH=$PWD .venv/bin/python bench/slow_readers.py --readers 8 --mb 40 --stderr

Starts real memory, scheduler, executor (bubblewrap) and gateway processes (tests/harness.py),
submits one task whose python step prints --mb MB to stdout (and as much to stderr with
--stderr), and has --readers clients follow GET /v1/tasks/{id}/events at about --rate MB/s
each (far slower than the task writes). Prints the gateway's resident memory (VmRSS, sampled,
and the kernel's peak VmHWM from /proc/PID/status) while they read and after they left, and
each reader's event count (and the scheduler's peak).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration" / "gateway"))

from gateway_stack import TEST_ENV, start_gateway
from harness import Cluster

READ_BYTES = 64 * 1024


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def output_code(megabytes: int, stderr: bool) -> str:
    """A python step printing `megabytes` MB of numbered 100-byte lines (to stderr too)."""
    code = (
        "import sys\n"
        f"for i in range({megabytes * 10_000}):\n"
        "    sys.stdout.write(f'{i:09d} ' + 'o' * 89 + '\\n')\n"
    )
    if stderr:
        code += f"for i in range({megabytes * 10_000}):\n    sys.stderr.write(f'{{i:09d}} ' + 'e' * 89 + '\\n')\n"
    return code


def slow_read(url: str, task_id: str, bytes_per_second: float, counts: list[int], slot: int) -> None:
    """Follows the task's events, reading at most READ_BYTES at a time at about `bytes_per_second`;
    counts the event frames until `finished`."""
    tail = b""
    received, started = 0, time.monotonic()
    with httpx.Client(base_url=url, timeout=600) as client, client.stream("GET", f"/v1/tasks/{task_id}/events") as reply:
        for data in reply.iter_raw(READ_BYTES):
            received += len(data)
            ahead = received / bytes_per_second - (time.monotonic() - started)
            if ahead > 0.01:  # paced in steps of 10 ms or more: reads come in small pieces
                time.sleep(ahead)
            frames = (tail + data).split(b"\n\n")
            tail = frames.pop()
            for frame in frames:
                if frame.startswith(b"id:"):
                    counts[slot] += 1
                    if b"\nevent: finished\n" in frame:
                        return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--mb", type=int, default=40, help="MB the task prints to stdout")
    parser.add_argument("--stderr", action="store_true", help="and as many to stderr")
    parser.add_argument("--rate", type=float, default=4.0, help="MB/s each reader reads")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the services on the way out

    data_dir = Path(tempfile.mkdtemp(prefix="corral-slow-readers-"))
    data_dir.chmod(0o755)
    # The default heartbeat timeout (not the tests' 3 s): moving 40 MB keeps a loaded machine busy.
    cluster = Cluster.new(data_dir, **{**TEST_ENV, "CORRAL_HEARTBEAT_TIMEOUT_SECONDS": "10"})
    try:
        cluster.start_memory()
        cluster.start_scheduler()
        cluster.start_executor()
        start_gateway(cluster)
        pid = cluster.services["gateway"].proc.pid
        idle = memory_kib(pid)
        limit = (args.mb + 8) * 1024 * 1024
        task = {
            "steps": [{"tool": "python", "code": output_code(args.mb, args.stderr)}],
            "limits": {"max_output_bytes": limit},
        }
        with httpx.Client(base_url=cluster.gateway_url, timeout=60) as client:
            reply = client.post("/v1/tasks", json=task)
            reply.raise_for_status()
            task_id = reply.json()["task_id"]
            counts = [0] * args.readers
            readers = [
                threading.Thread(
                    target=slow_read, args=(cluster.gateway_url, task_id, args.rate * 1e6, counts, n), daemon=True
                )
                for n in range(args.readers)
            ]
            started = time.monotonic()
            for reader in readers:
                reader.start()
            peak_sampled = 0
            while any(r.is_alive() for r in readers):
                peak_sampled = max(peak_sampled, memory_kib(pid)["VmRSS"])
                time.sleep(0.1)
            took = time.monotonic() - started
            time.sleep(2)  # let the gateway settle before reading what it kept
            after = memory_kib(pid)
            status = client.get(f"/v1/tasks/{task_id}")
        state = status.json().get("status")
        print(f"task {task_id}: {state} {status.json().get('error') or ''}")
        print(f"task {task_id}: {state}; {args.readers} readers at {args.rate:g} MB/s read for {took:.1f}s")
        print(f"events per reader: {counts}")
        print(f"status document: {len(status.content)} bytes")
        print(f"gateway VmRSS idle: {idle['VmRSS'] / 1024:.0f} MiB")
        print(f"gateway VmRSS peak (sampled): {peak_sampled / 1024:.0f} MiB")
        print(f"gateway VmHWM (kernel's peak): {after['VmHWM'] / 1024:.0f} MiB")
        print(f"gateway VmRSS after the readers left: {after['VmRSS'] / 1024:.0f} MiB")
        scheduler = memory_kib(cluster.services["scheduler"].proc.pid)
        print(f"scheduler VmHWM: {scheduler['VmHWM'] / 1024:.0f} MiB, VmRSS after: {scheduler['VmRSS'] / 1024:.0f} MiB")
    finally:
        cluster.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
