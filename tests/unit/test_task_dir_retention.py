"""The executor's sweep of old task directories (services/executor/retention.py) on a real
directory tree: only directories of tasks it does not run, unchanged since the cutoff, go."""

from __future__ import annotations

import os
import time
from pathlib import Path

from services.executor.retention import remove_ended_task_dirs

WEEK = 7 * 24 * 3600


def aged(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def test_only_old_directories_of_tasks_not_running_go(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    for name in ("old-done", "old-running", "new-done", ".warm"):
        (tasks / name).mkdir(parents=True)
        (tasks / name / "agent.log").write_text("log")
    # A task may leave a directory it cannot write to itself (and so neither could rmtree).
    locked = tasks / "old-done" / "locked"
    locked.mkdir()
    (locked / "file").write_text("x")
    locked.chmod(0o500)
    (tasks / "old-link").symlink_to(".warm")  # a run's link into a warm slot, left by a crash
    for path in (locked, *(tasks / name / "agent.log" for name in ("old-done", "old-running", ".warm"))):
        aged(path, WEEK)
    for name in ("old-done", "old-running", ".warm", "old-link"):
        aged(tasks / name, WEEK)  # last: making their contents moved their times

    removed = remove_ended_task_dirs(tasks, running={"old-running"}, before=time.time() - 3600)

    assert removed == 2
    assert sorted(p.name for p in tasks.iterdir()) == [".warm", "new-done", "old-running"]
    assert (tasks / "old-running" / "agent.log").read_text() == "log"
