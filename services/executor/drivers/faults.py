"""Words for a step that hit one of its sandbox's cgroup limits (memory, processes) or filled a
size-limited filesystem. The agent reports the cgroup's OOM-kill and pids-max counters per step
(`limit_events`); this turns them, with the step's ending, into the step's error.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping

from services.executor.drivers.base import ProcessResult, SandboxLimits

DISK_FULL_MARKER = "No space left on device"


def out_of_memory(limits: SandboxLimits) -> str:
    """The words for the kernel's OOM kill in a sandbox's memory cgroup (both drivers)."""
    return f"out of memory: the sandbox's processes used more than its {limits.memory_mb} MiB memory limit"


def pid_budget_used_up(budget: int) -> str:
    """The words for a fork the executor's pid budget refused (both drivers)."""
    return f"the executor's process budget is used up ({budget} processes for all of its sandboxes together)"


def limit_error(
    result: ProcessResult,
    events: Mapping[str, int],
    limits: SandboxLimits,
    tmp_size_mb: int,
    pid_budget: int = 0,
) -> str:
    """The error naming the limit the step hit, or "" (then the generic description applies).
    `pid_budget`: set when the executor's pid budget, not the sandbox's own limit, refused a fork."""
    if result.ok or result.timed_out or result.killed or result.error:
        return ""
    if result.signal is not None:
        ending = "killed"
    else:
        ending = f"exited with code {result.exit_code}: a process was killed"
    if events.get("oom_kill"):
        if result.signal == signal.SIGKILL:
            return f"killed: {out_of_memory(limits)}"
        return f"{ending}: {out_of_memory(limits)}"
    if events.get("pids_max"):
        prefix = "killed" if result.signal is not None else f"exited with code {result.exit_code}"
        if pid_budget:
            return f"{prefix}: {pid_budget_used_up(pid_budget)}"
        return f"{prefix}: process limit reached ({limits.max_processes} processes)"
    if DISK_FULL_MARKER in result.stderr:
        prefix = "killed" if result.signal is not None else f"exited with code {result.exit_code}"
        return (
            f"{prefix}: no space left on device (the sandbox's /tmp is limited to {tmp_size_mb} MiB, "
            f"each file to {limits.max_file_size_mb} MiB)"
        )
    return ""
