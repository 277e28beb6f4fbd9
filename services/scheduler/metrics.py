"""The scheduler's /metrics: tasks by state and the queue's depth, read from the task store at
each scrape, and the executors it knows (the RPC latencies come from corral.grpc_server)."""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily, Metric

from corral.v1 import task_pb2

from .core import Scheduler


def state_name(state: int) -> str:
    return task_pb2.TaskState.Name(state).removeprefix("TASK_STATE_").lower()  # type: ignore[arg-type]


async def scheduler_metrics(scheduler: Scheduler) -> list[Metric]:
    counts = await scheduler.store.count_by_state()
    tasks = GaugeMetricFamily("corral_tasks", "Stored tasks, by state.", labels=["state"])
    for state in task_pb2.TaskState.values():
        if state != task_pb2.TASK_STATE_UNSPECIFIED:
            tasks.add_metric([state_name(state)], counts.get(state, 0))
    queued = GaugeMetricFamily(
        "corral_tasks_queued", "Tasks waiting for an executor (scheduled, not yet running)."
    )
    queued.add_metric([], counts.get(task_pb2.TASK_STATE_SCHEDULED, 0))
    executors = list(scheduler.executors.all())
    alive = GaugeMetricFamily("corral_scheduler_executors", "Executors registered and heartbeating.")
    alive.add_metric([], len(executors))
    free = GaugeMetricFamily("corral_scheduler_free_slots", "Tasks the registered executors could start now.")
    free.add_metric([], sum(max(0, e.free) for e in executors))
    return [tasks, queued, alive, free]
