"""A whole Corral as real processes for fault tests (and bench/fault_run.py): memory, scheduler,
executors and (optionally) the gateway; kill -9 any of them, start it again, and audit every
task afterwards through what a client sees -- its events and its history.

A module of its own (not conftest) so the bench and other fault tests import it by name.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from harness import Cluster, free_port, wait_for_http

from corral.internal.v1 import registry_pb2, registry_pb2_grpc
from corral.v1 import memory_pb2, memory_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, task_pb2

ENDED = frozenset({task_pb2.TASK_STATE_COMPLETED, task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_CANCELLED})
# What each executor event leaves in the task's history (memory service).
HISTORY_OF_EVENT = {
    "started": memory_pb2.HISTORY_KIND_TASK_STARTED,
    "step_started": memory_pb2.HISTORY_KIND_ACTION,
    "step_finished": memory_pb2.HISTORY_KIND_RESULT,
    "finished": memory_pb2.HISTORY_KIND_TASK_FINISHED,
    "network_refused": memory_pb2.HISTORY_KIND_NETWORK_REFUSED,
}


def sleepy_spec(steps: int = 3, seconds: float = 0.3) -> task_pb2.TaskSpec:
    """A few short steps that sleep: long enough to be caught running by a kill."""
    return task_pb2.TaskSpec(
        steps=[
            task_pb2.Step(shell=task_pb2.ShellAction(command=f"echo step-{i}; sleep {seconds}"))
            for i in range(steps)
        ]
    )


@dataclass
class TaskAudit:
    """One ended task as its events tell it."""

    task_id: str
    state: int
    error: str
    events: list[task_pb2.TaskEvent]
    history: list[memory_pb2.HistoryEvent] = field(default_factory=list)

    @property
    def starts(self) -> int:
        return sum(1 for e in self.events if e.HasField("started"))

    @property
    def numbered_in_order(self) -> bool:
        """Sequences 1..N, none missing, none repeated."""
        return [e.sequence for e in self.events] == list(range(1, len(self.events) + 1))

    def expected_history(self) -> Counter[int]:
        """The history the executor's events call for (the scheduler's own events have none)."""
        kinds: Counter[int] = Counter()
        executor_ran = self.starts > 0
        for event in self.events:
            kind = event.WhichOneof("event")
            if kind == "step_finished" and event.step_finished.result.state == task_pb2.STEP_STATE_SKIPPED:
                continue
            if kind in HISTORY_OF_EVENT and executor_ran:
                kinds[HISTORY_OF_EVENT[kind]] += 1
        return kinds

    def history_missing(self) -> int:
        have = Counter(e.kind for e in self.history)
        return sum(max(0, n - have[kind]) for kind, n in self.expected_history().items())


class FaultStack:
    """The processes of one Corral, started and killed by name: memory, scheduler, executor,
    executor-2..., gateway."""

    def __init__(self, data_dir: Path, executors: int = 1, capacity: int = 4, gateway: bool = False, **env: str) -> None:
        data_dir.chmod(0o755)  # sandboxes run as an unprivileged host uid
        defaults = {
            "CORRAL_EXECUTOR_CAPACITY": str(capacity),
            "CORRAL_QUOTA_MAX_TASKS": "100000",
            "CORRAL_QUOTA_SUBMISSIONS_PER_SECOND": "100000",
            "PYTHONUNBUFFERED": "1",
        }
        self.cluster = Cluster.new(data_dir, **{**defaults, **env})
        self.executor_names = ["executor"] + [f"executor-{i}" for i in range(2, executors + 1)]
        self._executor_env = {
            name: {} if name == "executor" else {"CORRAL_EXECUTOR_ADDRESS": f"127.0.0.1:{free_port()}"}
            for name in self.executor_names
        }
        self.gateway = gateway

    # --- processes ---------------------------------------------------------------------------

    def start_all(self) -> None:
        for name in ("memory", "scheduler", *self.executor_names, *(["gateway"] if self.gateway else [])):
            self.start(name)
        self.wait_for_executors(len(self.executor_names))

    def start(self, name: str) -> None:
        c = self.cluster
        if name == "memory":
            c.start_memory()
        elif name == "scheduler":
            c.start_scheduler()
        elif name in self._executor_env:
            c.start_executor(name, **self._executor_env[name])
        elif name == "gateway":
            wait_for_http(c.start("gateway", "gateway"), c.gateway_url + "/openapi.json", timeout=90)
        else:
            raise ValueError(f"no service {name!r} in this stack")

    def kill(self, name: str) -> None:
        """kill -9 of the service (its sandboxes' processes are its children: the group goes)."""
        self.cluster.services[name].stop(signal.SIGKILL)

    def restart(self, name: str) -> None:
        self.kill(name)
        self.start(name)

    def stop(self) -> None:
        self.cluster.stop()

    def executor_address(self, executor_id: str) -> str:
        """host:port of the executor registered under `executor_id`."""
        name = next(n for n, ident in self.cluster.executor_ids.items() if ident == executor_id)
        return self._executor_env[name].get("CORRAL_EXECUTOR_ADDRESS", self.cluster.executor_address)

    def log(self, name: str) -> str:
        return self.cluster.services[name].log()

    # --- clients -----------------------------------------------------------------------------

    def channel(self) -> grpc.Channel:
        return self.cluster.channel(self.cluster.scheduler_address)

    def wait_for_executors(self, count: int, limit: float = 30) -> None:
        deadline = time.monotonic() + limit
        with self.channel() as chan:
            stub = registry_pb2_grpc.ExecutorRegistryServiceStub(chan)
            while time.monotonic() < deadline:
                executors = stub.ListExecutors(registry_pb2.ListExecutorsRequest(), timeout=5).executors
                if sum(e.alive for e in executors) >= count:
                    return
                time.sleep(0.1)
        raise TimeoutError(f"fewer than {count} executors registered")

    def wait_history_delivered(self, limit: float = 120) -> int:
        """Waits until no live executor holds undelivered history (queued or spooled: after an
        outage it is still on its way when the tasks have ended); the bytes left at the limit."""
        deadline = time.monotonic() + limit
        left = -1
        with self.channel() as chan:
            stub = registry_pb2_grpc.ExecutorRegistryServiceStub(chan)
            while time.monotonic() < deadline:
                request = registry_pb2.ListExecutorsRequest(include_network_counters=True)
                executors = stub.ListExecutors(request, timeout=10).executors
                left = sum(e.history_undelivered_bytes for e in executors if e.alive)
                if left == 0:
                    return 0
                time.sleep(0.2)
        return left

    def submit(self, specs: list[task_pb2.TaskSpec]) -> list[str]:
        with self.channel() as chan:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(chan)
            return [stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=s), timeout=10).task_id for s in specs]

    def states(self, task_ids: list[str]) -> dict[str, task_pb2.Task]:
        """Each task as the scheduler has it now (retrying while it restarts)."""
        with self.channel() as chan:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(chan)
            tasks: dict[str, task_pb2.Task] = {}
            for task_id in task_ids:
                reply = stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id), timeout=10, wait_for_ready=True)
                tasks[task_id] = reply.task
            return tasks

    def count_in_state(self, task_ids: list[str], state: int) -> int:
        return sum(t.state == state for t in self.states(task_ids).values())

    def wait_ended(self, task_ids: list[str], limit: float) -> dict[str, task_pb2.Task]:
        """The tasks once all ended, or as they are after `limit` seconds."""
        deadline = time.monotonic() + limit
        pending = list(task_ids)
        tasks: dict[str, task_pb2.Task] = {}
        while True:
            tasks.update(self.states(pending))
            pending = [t for t in pending if tasks[t].state not in ENDED]
            if not pending or time.monotonic() > deadline:
                return tasks
            time.sleep(0.2)

    def gateway_events(self, task_id: str) -> list[tuple[int, str]]:
        """(id, event kind) of each Server-Sent Event of GET /v1/tasks/{id}/events, to `finished`."""
        import httpx

        frames: list[tuple[int, str]] = []
        sequence = 0
        url = f"{self.cluster.gateway_url}/v1/tasks/{task_id}/events"
        with httpx.stream("GET", url, timeout=30) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.startswith("id: "):
                    sequence = int(line[4:])
                elif line.startswith("event: "):
                    frames.append((sequence, line[7:]))
        return frames

    def audit(self, tasks: dict[str, task_pb2.Task], history: bool = False) -> list[TaskAudit]:
        """Every task's events replayed from the scheduler (and its history from memory)."""
        audits = []
        with self.channel() as chan, self.cluster.channel(self.cluster.memory_address, "gateway") as memory_chan:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(chan)
            memory = memory_pb2_grpc.MemoryServiceStub(memory_chan)
            for task_id, task in tasks.items():
                events = [
                    r.event
                    for r in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task_id), timeout=30)
                ] if task.state in ENDED else []
                audit = TaskAudit(task_id, task.state, task.error, events)
                if history:
                    reply = memory.ListEvents(memory_pb2.ListEventsRequest(task_id=task_id, limit=10000), timeout=10)
                    audit.history = list(reply.events)
                audits.append(audit)
        return audits


@dataclass
class Tally:
    """What a fault run came to, in counts."""

    tasks: int
    completed: int
    failed: int
    cancelled: int
    unfinished: int
    run_twice: int
    misnumbered: int
    history_missing: int
    failures: list[str]

    @classmethod
    def of(cls, audits: list[TaskAudit]) -> Tally:
        states = Counter(a.state for a in audits)
        return cls(
            tasks=len(audits),
            completed=states[task_pb2.TASK_STATE_COMPLETED],
            failed=states[task_pb2.TASK_STATE_FAILED],
            cancelled=states[task_pb2.TASK_STATE_CANCELLED],
            unfinished=sum(n for s, n in states.items() if s not in ENDED),
            run_twice=sum(a.starts > 1 for a in audits),
            misnumbered=sum(not a.numbered_in_order for a in audits),
            history_missing=sum(a.history_missing() for a in audits),
            failures=sorted({a.error for a in audits if a.state == task_pb2.TASK_STATE_FAILED})[:10],
        )
