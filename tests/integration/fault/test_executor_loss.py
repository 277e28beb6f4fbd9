"""An executor killed under load fails only the tasks it was running, naming it; everything queued
behind them completes on the other executor, once. Real processes, kill -9, counts only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_stack import FaultStack, Tally, sleepy_spec

from corral.v1 import task_pb2

pytestmark = pytest.mark.slow

LOAD = 40


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[FaultStack]:
    s = FaultStack(tmp_path, executors=2, capacity=4)
    try:
        s.start_all()
        yield s
    finally:
        s.stop()


@pytest.mark.timeout(300)
def test_executor_kill_under_load_fails_only_its_running_tasks(stack: FaultStack) -> None:
    task_ids = stack.submit([sleepy_spec(steps=3, seconds=0.3) for _ in range(LOAD)])
    victim = stack.cluster.executor_ids["executor"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = stack.states(task_ids)
        on_victim = [t for t, task in states.items()
                     if task.state == task_pb2.TASK_STATE_RUNNING and task.executor_id == victim]
        if len(on_victim) >= 2:
            break
        time.sleep(0.05)
    assert len(on_victim) >= 2, "the first executor never ran two tasks at once"
    stack.kill("executor")

    tasks = stack.wait_ended(task_ids, limit=240)
    tally = Tally.of(stack.audit(tasks))
    failed = {t.task_id: t for t in tasks.values() if t.state == task_pb2.TASK_STATE_FAILED}
    # Only tasks that were on the killed executor failed, each saying so by its id; at most its
    # capacity of them (what it was running when it died).
    assert failed, "no task was running on the killed executor"
    assert all(t.executor_id == victim and victim in t.error for t in failed.values()), tally.failures
    assert len(failed) <= 4
    assert tally.completed == LOAD - len(failed) and tally.unfinished == 0 and tally.cancelled == 0
    assert tally.run_twice == 0 and tally.misnumbered == 0
    survivor = stack.cluster.executor_ids["executor-2"]
    late = [t for t in tasks.values() if t.state == task_pb2.TASK_STATE_COMPLETED and t.task_id not in on_victim]
    assert any(t.executor_id == survivor for t in late)
