#!/usr/bin/env python3
"""`corral run -q 'echo x'` as a whole process, against a running embedded stack (a benchmark,
not a test): issue 13's row "`corral run -q 'echo x'` whole process, target <= 150 ms".

    .venv/bin/python bench/cli_startup.py                          # starts `corral up` on free ports
    .venv/bin/python bench/cli_startup.py --url http://127.0.0.1:8000   # against a running gateway
    .venv/bin/python bench/cli_startup.py --runs 30
    .venv/bin/python bench/cli_startup.py --against /work/main   # another checkout's CLI, in alternation

Prints, over N sequential runs (after one warm-up that also writes the bytecode caches): the
whole process's wall time (p50, p95, min) and its ratio to the 150 ms target; beside it the
floors: a bare `python -c pass`, the CLI's imports alone (`python -X importtime`), and the same
task submitted and followed in-process through the SDK (what the gateway and sandbox take).
With --against, another checkout's CLI runs in alternation with this one's, against the same
gateway (a before/after on a busy machine: both see the same load).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from corral_up import corral_up

TARGET_SECONDS = 0.150
REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))]


def child_env(repo: Path = REPO) -> dict[str, str]:
    # Bytecode caches as an installed package has them (pip compiles on install).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(repo) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@contextmanager
def embedded_stack() -> Iterator[str]:
    """`corral up` on free ports with a temporary data directory; yields the gateway's URL."""
    with corral_up("corral-bench-cli-", child_env(), cwd=REPO) as url:
        yield url


# CPU seconds (user + system) of each child timed, beside its wall time: on a busy machine the
# CPU a run costs says more than how long it waited for a core.
CPU: list[float] = []


def timed(argv: list[str], env: dict[str, str], cwd: Path = REPO) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return took


def import_seconds(env: dict[str, str]) -> float:
    """What the CLI's imports for `corral run` take (importtime's cumulative figures)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import corral.cli, corral.cli_client, corral.cli_run, corral.sdk.sync"],
        env=env, cwd=REPO, capture_output=True, text=True, check=True,
    )
    top = [line for line in done.stderr.splitlines() if line.startswith("import time:") and "|" in line
           and not line.split("|")[2].startswith("  ") and "cumulative" not in line]
    return sum(int(line.split("|")[1]) for line in top) / 1e6


def in_process(url: str, runs: int) -> float:
    """The same task through the SDK in this process: the gateway's and the sandbox's share."""
    sys.path.insert(0, str(REPO))
    from corral.sdk.sync import Client, Task

    times = []
    with Client(url) as client:
        for _ in range(runs):
            started = time.perf_counter()
            with Task.submit({"steps": [{"tool": "shell", "command": "echo x"}]}, client=client) as task:
                for _event in task.events():
                    pass
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(url: str, runs: int) -> tuple[float, float, float]:
    """Prints the figures; returns the p50s (seconds) of the whole process, of `python -c pass`
    and of the process's CPU."""
    env = child_env()
    command = [sys.executable, "-m", "corral.cli", "--url", url, "run", "-q", "echo x"]
    timed(command, env)  # warm-up: bytecode caches, the warm pool
    CPU.clear()
    runs_s = [timed(command, env) for _ in range(runs)]
    cli_cpu = statistics.median(CPU)
    CPU.clear()
    bare = statistics.median([timed([sys.executable, "-c", "pass"], env) for _ in range(max(5, runs // 2))])
    bare_cpu = statistics.median(CPU)
    imports = statistics.median([import_seconds(env) for _ in range(5)])
    task = in_process(url, max(5, runs // 2))
    p50 = statistics.median(runs_s)
    print(f"`corral run -q 'echo x'` whole process, {runs} runs against {url}")
    print(f"  p50 {p50 * 1000:7.1f} ms   p95 {percentile(runs_s, 0.95) * 1000:7.1f} ms   "
          f"min {min(runs_s) * 1000:7.1f} ms")
    print(f"  target {TARGET_SECONDS * 1000:.0f} ms: p50 is {p50 / TARGET_SECONDS:.2f}x the target "
          f"({'met' if p50 <= TARGET_SECONDS else 'NOT met'})")
    print(f"  CPU of the process (user + system) p50 {cli_cpu * 1000:7.1f} ms (python -c pass: {bare_cpu * 1000:.1f} ms)")
    print("floors (p50):")
    print(f"  python -c pass                         {bare * 1000:7.1f} ms")
    print(f"  the CLI's imports (importtime)         {imports * 1000:7.1f} ms")
    print(f"  the task itself, in-process via SDK    {task * 1000:7.1f} ms")
    print(f"  rest (parsing, printing, exit)         {(p50 - bare - imports - task) * 1000:7.1f} ms")
    return p50, bare, cli_cpu


def against(url: str, runs: int, other: Path) -> None:
    """This checkout's CLI and `other`'s, run in alternation: p50 wall and CPU of each."""
    command = [sys.executable, "-m", "corral.cli", "--url", url, "run", "-q", "echo x"]
    sides = {"this": (child_env(), REPO), str(other): (child_env(other), other)}
    walls: dict[str, list[float]] = {name: [] for name in sides}
    cpus: dict[str, list[float]] = {name: [] for name in sides}
    for env, cwd in sides.values():
        timed(command, env, cwd)  # warm-up: bytecode caches
    for _ in range(runs):
        for name, (env, cwd) in sides.items():
            CPU.clear()
            walls[name].append(timed(command, env, cwd))
            cpus[name].append(CPU[0])
    print(f"`corral run -q 'echo x'`, {runs} runs of each in alternation (load {os.getloadavg()[0]:.1f})")
    for name in sides:
        print(f"  {name:30s} p50 {statistics.median(walls[name]) * 1000:7.1f} ms   "
              f"CPU p50 {statistics.median(cpus[name]) * 1000:7.1f} ms")
    this, that = (statistics.median(walls[n]) for n in sides)
    print(f"  this / other: {this / that:.2f}x wall, "
          f"{statistics.median(cpus['this']) / statistics.median(cpus[str(other)]):.2f}x CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running gateway (default: start `corral up` on free ports)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--against", type=Path, metavar="CHECKOUT",
                        help="also run this other checkout's CLI, in alternation with this one's")
    args = parser.parse_args()
    with contextlib.nullcontext(args.url) if args.url else embedded_stack() as url:
        measure(url, args.runs)
        if args.against:
            against(url, args.runs, args.against.resolve())


if __name__ == "__main__":
    main()
