#!/usr/bin/env python3
"""Issue 13's table in one run, every row beside its floor with its ratio (a benchmark, not a
test). Starts `corral up` on free ports (bench/e2e.py's embedded system), bubblewrap first,
then docker if its image is there, then a third one for the density row.

    .venv/bin/python bench/targets.py                  # every row
    .venv/bin/python bench/targets.py --no-docker      # without the docker row
    .venv/bin/python bench/targets.py --only cli --only density
    CORRAL_DOCKER_IMAGE=corral/sandbox:x .venv/bin/python bench/targets.py

Rows (the issue's table; --only takes their names):
  burst, cpu       B one-step `true` tasks at once, tasks/s, vs bare bwrap run 2 at a time; CPU
                   of every process of the system (the `corral up` tree, sandboxes included:
                   children's times from /proc or a cgroup) per task of the burst, vs the CPU
                   of one bare bwrap run (one burst measures both)
  sequential       submit -> finished p50 of N one-step tasks, gRPC, vs one bare bwrap run
  sequential-rest  the same over REST (the blocking SDK: POST /v1/tasks, then its events)
  rest-call        a `true` command in an existing sandbox, REST round trip p50
                   (bench/sandbox_calls.py), vs 10 ms
  typescript       p50 of a hello-world step's duration after the sandbox's first, vs 100 ms
  docker           submit -> finished p50 with the docker driver and a warm pool of 2, tasks
                   --docker-gap apart so that each claims a warm container, then back to back
                   (the refill cannot keep up); vs 40 ms (and a bare `docker run --rm IMAGE true`)
  cli              `corral run -q 'echo x'` whole process p50 (bench/cli_startup.py), vs 150 ms
  density          idle headless long-lived sandboxes that fit in 24 GiB (bench/density.py),
                   vs 10,000
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cli_startup
import density
import sandbox_calls
from e2e import bare_docker_run, embedded_system, latency, percentile

from corral.client import CorralClient
from corral.schema import TaskRequest
from corral.v1 import task_pb2

TRUE_TASK = TaskRequest.model_validate({"steps": [{"tool": "shell", "command": "true"}]})
TS_HELLO = "console.log('hello');"
T = TypeVar("T")
TICK = os.sysconf("SC_CLK_TCK")


def bare_bwrap_argv(task_dir: str) -> list[str]:
    """bench/bwrap_bare.sh's sandbox: the driver's namespaces and mounts, minus the agent."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SystemExit("bwrap not found")
    drop = []
    if os.geteuid() == 0:  # as the driver does: bwrap as an unprivileged host user
        os.chown(task_dir, 65534, 65534)
        drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    links = []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        if os.path.islink(f"/{name}"):
            links += ["--symlink", os.readlink(f"/{name}"), f"/{name}"]
        elif os.path.isdir(f"/{name}"):
            links += ["--ro-bind", f"/{name}", f"/{name}"]
    return [*drop, bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
            "--new-session", "--uid", "1000", "--gid", "1000", "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc", *links, "--proc", "/proc",
            "--dev", "/dev", "--tmpfs", "/tmp", "--bind", task_dir, "/tasks/t", "--chdir", "/tasks/t",
            "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--", "/bin/true"]


def bare_bwrap(runs: int) -> tuple[float, float, float]:
    """Bare `bwrap ... true`: median seconds of one run, CPU seconds of one run (its rusage),
    and runs per second two at a time (one per core of the 2-core reference machine)."""
    task_dir = tempfile.mkdtemp(prefix="corral-bare-")
    os.chmod(task_dir, 0o755)
    argv = bare_bwrap_argv(task_dir)
    argv[0] = shutil.which(argv[0]) or argv[0]
    times, cpu = [], []
    for _ in range(runs):
        start = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, os.environ)
        _, _, usage = os.wait4(pid, 0)
        times.append(time.perf_counter() - start)
        cpu.append(usage.ru_utime + usage.ru_stime)
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: subprocess.run(argv, check=True), range(runs * 2)))
    rate = runs * 2 / (time.perf_counter() - start)
    shutil.rmtree(task_dir, ignore_errors=True)
    return statistics.median(times), statistics.median(cpu), rate


def tree_cpu(root: int) -> float:
    """CPU seconds of `root` and every live descendant, each with its reaped children's."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(name))
        cpu[int(name)] = sum(int(f) for f in fields[11:15]) / TICK
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


def join_cpu_cgroup() -> Path | None:
    """A cgroup of this process's own (v1 cpuacct or v2), which `corral up` then inherits: its
    CPU counts every process that ever ran in it, sandboxes killed before anyone waited for
    them included (which /proc's children's times miss). None where one cannot be made."""
    v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    base = Path("/sys/fs/cgroup") if v2 else Path("/sys/fs/cgroup/cpuacct")
    mine = base / f"corral-bench-{os.getpid()}"
    try:
        mine.mkdir()
        (mine / "cgroup.procs").write_text(str(os.getpid()))
    except OSError:
        return None

    def leave() -> None:  # back where we came from; the cgroup goes once empty
        with contextlib.suppress(OSError):
            (base / "cgroup.procs").write_text(str(os.getpid()))
            mine.rmdir()

    atexit.register(leave)
    return mine


def system_cpu(cgroup: Path | None) -> float:
    """CPU seconds so far of this process and everything it started."""
    if cgroup is None:
        return tree_cpu(os.getpid())
    if (cgroup / "cpuacct.usage").exists():
        return int((cgroup / "cpuacct.usage").read_text()) / 1e9
    stat = dict(line.split() for line in (cgroup / "cpu.stat").read_text().splitlines())
    return int(stat["usage_usec"]) / 1e6


CGROUP: Path | None = None


SERVICES = {"-m gateway": "gateway", "-m services.scheduler": "scheduler", "-m services.executor": "executor",
            "-m services.memory": "memory", "-m services.gui": "gui", "-m corral.cli up": "corral up"}


def services_cpu() -> dict[str, float]:
    """Each service process's own CPU seconds (not its reaped children's: the sandboxes), of
    this benchmark's system only (its cgroup's processes, else every process here)."""
    totals: dict[str, float] = {}
    pids = os.listdir("/proc") if CGROUP is None else (CGROUP / "cgroup.procs").read_text().split()
    for name in pids:
        if not name.isdigit():
            continue
        try:
            command = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            raw = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        service = next((label for marker, label in SERVICES.items() if marker in command), None)
        if service is not None:
            fields = raw[raw.rfind(")") + 2 :].split()
            totals[service] = totals.get(service, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return totals


async def burst(client: CorralClient, count: int) -> tuple[float, float, int]:
    """`count` tasks at once: tasks/s, CPU seconds of the whole system per task, not completed.
    Prints where that CPU went: each service's own, and the rest (sandboxes: bwrap, the agent,
    the step's processes)."""
    own_before = time.process_time()
    before = system_cpu(CGROUP)
    services_before = services_cpu()
    start = time.perf_counter()
    task_ids = await asyncio.gather(*(client.submit(TRUE_TASK) for _ in range(count)))
    tasks = await asyncio.gather(*(client.wait(task_id) for task_id in task_ids))
    elapsed = time.perf_counter() - start
    await asyncio.sleep(1.0)  # the last sandboxes' teardown and the pool's refill
    system = system_cpu(CGROUP) - before - (time.process_time() - own_before)  # not this client's
    failed = sum(task.state != task_pb2.TASK_STATE_COMPLETED for task in tasks)
    spent = {name: seconds - services_before.get(name, 0.0) for name, seconds in services_cpu().items()}
    spent["sandboxes and the rest"] = system - sum(spent.values())
    print("  (CPU per task by process: " + ", ".join(
        f"{name} {seconds / count * 1000:.1f} ms" for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1])) + ")")
    return count / elapsed, system / count, failed


async def typescript_steps(client: CorralClient, count: int) -> list[float]:
    """Durations of `count` hello-world TypeScript steps after a task's first (seconds)."""
    steps = [{"tool": "typescript", "code": TS_HELLO, "timeout": 120}] * (count + 1)
    task_id = await client.submit(TaskRequest.model_validate({"steps": steps}))
    started: dict[int, float] = {}
    durations: list[float] = []
    async with contextlib.aclosing(client.watch(task_id)) as events:
        async for event in events:
            kind = event.WhichOneof("event")
            at = event.time.ToNanoseconds() / 1e9
            if kind == "step_started":
                started[event.step_started.index] = at
            elif kind == "step_finished":
                index = event.step_finished.result.index
                if index > 0:
                    durations.append(at - started[index])
    return durations


def row(name: str, value: str, floor: str, ratio: float, target: str) -> None:
    print(f"  {name:<44} {value:>12}   floor {floor:>12}   ratio {ratio:6.2f}x   target {target}")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


ROWS = ("burst", "cpu", "sequential", "sequential-rest", "rest-call", "typescript", "docker", "cli", "density")


def rest_sequential(count: int) -> list[float]:
    """submit -> finished (seconds) of `count` one-step tasks over REST, one after another."""
    from corral.sdk.sync import Client, Task

    times = []
    with Client() as client:  # CORRAL_URL: the embedded system's gateway
        for _ in range(count + 1):
            start = time.perf_counter()
            with Task.submit({"steps": [{"tool": "shell", "command": "echo x"}]}, client=client) as task:
                for kind, _data in task.events():
                    if kind == "finished":
                        break
            times.append(time.perf_counter() - start)
    return times[1:]  # the first: connections, caches


def quietly(measure: Callable[[], T]) -> T:
    """What a script's own measurement returns, without its printed report."""
    with contextlib.redirect_stdout(io.StringIO()):
        return measure()


async def bubblewrap_rows(scheduler: str, settings: object, args: argparse.Namespace,
                          floor: tuple[float, float, float], wanted: set[str]) -> None:
    one_run, one_cpu, bare_rate = floor
    async with CorralClient(scheduler, settings) as client:  # type: ignore[arg-type]
        await client.wait(await client.submit(TRUE_TASK))  # warm-up: connections, caches
        failed = not_completed = 0
        if wanted & {"burst", "cpu"}:
            rate, cpu, failed = await burst(client, args.burst)
            row(f"burst, {args.burst} one-step tasks (tasks/s)", f"{rate:.1f}/s", f"{bare_rate:.1f}/s", rate / bare_rate, ">= 0.5x")
            row("CPU per one-step task, all processes", ms(cpu), ms(one_cpu), cpu / one_cpu, "<= 10 ms")
        if "sequential" in wanted:
            _, finished, not_completed, _ = await latency(client, args.count)
            p50 = percentile(finished, 0.5)
            row(f"sequential submit -> finished p50, gRPC (n={args.count})", ms(p50), ms(one_run), p50 / one_run, "<= 2.5x")
        if "sequential-rest" in wanted:
            rest = percentile(await asyncio.to_thread(rest_sequential, args.count), 0.5)
            row(f"sequential submit -> finished p50, REST (n={args.count})", ms(rest), ms(one_run), rest / one_run, "<= 2.5x")
        if "rest-call" in wanted:
            url = os.environ["CORRAL_URL"]
            call, own = await asyncio.to_thread(quietly, lambda: sandbox_calls.measure(url, args.calls))
            row(f"REST `true` in an existing sandbox p50 (n={args.calls})", f"{call:.1f} ms", "10.0 ms", call / 10.0, "<= 10 ms")
            print(f"  (of which the command itself, as the executor timed it: {own:.1f} ms)")
        if "typescript" in wanted:
            durations = await typescript_steps(client, args.ts_steps)
            ts = percentile(durations, 0.5)
            row(f"TypeScript hello-world step p50 (n={len(durations)})", ms(ts), "100.0 ms", ts / 0.1, "<= 100 ms")
        if "cli" in wanted:
            url = os.environ["CORRAL_URL"]
            cli, bare, cpu = await asyncio.to_thread(quietly, lambda: cli_startup.measure(url, args.cli_runs))
            row(f"`corral run -q 'echo x'` whole process p50 (n={args.cli_runs})", ms(cli), "150.0 ms", cli / 0.15, "<= 150 ms")
            print(f"  (the process's CPU p50: {ms(cpu)}; `python -c pass` alone: {ms(bare)})")
        if failed or not_completed:
            print(f"  (not completed: {failed} of the burst, {not_completed} of the sequential tasks)")


async def docker_rows(scheduler: str, settings: object, count: int, bare_run: float | None, gap: float) -> None:
    async with CorralClient(scheduler, settings) as client:  # type: ignore[arg-type]
        await client.wait(await client.submit(TRUE_TASK))
        # Each task `gap` apart, so that it claims a warm container (the pool refilled
        # meanwhile), then back to back, where the pool's refill (a container start each)
        # cannot keep up and tasks wait for cold ones.
        finished, not_completed = [], 0
        for _ in range(count):
            await asyncio.sleep(gap)
            _, one, failed, _ = await latency(client, 1)
            finished += one
            not_completed += failed
        p50 = percentile(finished, 0.5)
        row(f"docker, warm pool 2: submit -> finished p50 (n={count}, {gap:g} s apart)", ms(p50), "40.0 ms",
            p50 / 0.04, "<= 40 ms")
        _, finished, failed, _ = await latency(client, count)
        not_completed += failed
        p50 = percentile(finished, 0.5)
        row(f"docker, warm pool 2: back to back p50 (n={count})", ms(p50), "40.0 ms", p50 / 0.04, "(pool drained)")
        if bare_run is not None:
            print(f"  (bare `docker run --rm IMAGE true`: {ms(bare_run)}; not completed: {not_completed})")


def density_row(count: int) -> None:
    result = quietly(lambda: density.run_density(count))
    row(f"density: idle sandboxes in 24 GiB (n={count})", f"{result.fits:,}", f"{density.TARGET:,}",
        result.fits / density.TARGET, ">= 1x (10,000)")
    agent = sum(v for name, v in result.by_program.items() if name.startswith("python"))
    print(f"  ({density.mib(result.per_sandbox)} a sandbox: PSS {density.mib(result.pss)}, of which the agent "
          f"{density.mib(agent)}; kernel {density.mib(result.kernel + result.host_kernel)}; services "
          f"{density.mib(result.services)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--count", type=int, default=30, help="sequential tasks")
    parser.add_argument("-b", "--burst", type=int, default=100, help="tasks submitted at once")
    parser.add_argument("--ts-steps", type=int, default=10, help="TypeScript steps after the first")
    parser.add_argument("--bwrap-runs", type=int, default=30)
    parser.add_argument("--calls", type=int, default=100, help="REST calls in an existing sandbox")
    parser.add_argument("--cli-runs", type=int, default=15, help="`corral run` processes")
    parser.add_argument("--sandboxes", type=int, default=100, help="idle sandboxes of the density row")
    parser.add_argument("--no-docker", action="store_true")
    parser.add_argument("--docker-gap", type=float, default=1.0, help="seconds between the warm docker tasks")
    parser.add_argument("--only", action="append", choices=ROWS, metavar="ROW",
                        help=f"only this row (repeatable): {', '.join(ROWS)}")
    args = parser.parse_args()
    wanted = set(args.only or ROWS)
    if args.no_docker:
        wanted.discard("docker")

    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load {load:.1f}, Python {sys.version.split()[0]}")
    bubblewrap = wanted - {"docker", "density"}
    if bubblewrap:
        floor = bare_bwrap(args.bwrap_runs)
        print(f"floor: bare `bwrap --unshare-all ... true`: {ms(floor[0])} a run, {ms(floor[1])} CPU, "
              f"{floor[2]:.1f}/s two at a time")
        global CGROUP
        CGROUP = join_cpu_cgroup()
        print(f"bubblewrap (`corral up`, default warm pool; CPU from {CGROUP or '/proc'}):")
        with embedded_system({"CORRAL_SANDBOX_DRIVER": "bubblewrap"}) as (scheduler, settings):
            asyncio.run(bubblewrap_rows(scheduler, settings, args, floor, bubblewrap))
    if "docker" in wanted:
        docker_row(args)
    if "density" in wanted:
        print("density (`corral up`, bubblewrap, no warm pool):")
        density_row(args.sandboxes)
    print(f"load at the end: {os.getloadavg()[0]:.1f}")


def docker_row(args: argparse.Namespace) -> None:
    image = os.environ.get("CORRAL_DOCKER_IMAGE", "corral/sandbox:latest")
    if shutil.which("docker") is None:
        print("docker: not installed; its row is left out")
        return
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
        print(f"docker: no image {image} (scripts/build-images); its row is left out")
        return
    print(f"docker ({image}):")
    bare_run = bare_docker_run(3)
    env = {"CORRAL_SANDBOX_DRIVER": "docker", "CORRAL_DOCKER_WARM_POOL": "2", "CORRAL_DOCKER_IMAGE": image}
    with embedded_system(env) as (scheduler, settings):
        asyncio.run(docker_rows(scheduler, settings, max(args.count // 2, 5), bare_run, args.docker_gap))


if __name__ == "__main__":
    main()
