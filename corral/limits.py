"""What a task or sandbox may ask for in `limits`: never negative, never below what a sandbox
needs to start, never above the deployment's maximums (CORRAL_MAX_TASK_*). The scheduler checks
at submission, the executor again at start."""

from __future__ import annotations

from corral.config import Settings
from corral.v1 import task_pb2

# limits field -> (Settings attribute of its maximum, unit in messages)
CEILINGS = {
    "memory_mb": ("max_task_memory_mb", "MiB"),
    "max_processes": ("max_task_processes", "processes"),
    "max_file_size_mb": ("max_task_file_size_mb", "MiB"),
    "max_output_bytes": ("max_task_output_bytes", "bytes"),
    "disk_mb": ("max_task_disk_mb", "MiB"),
}

# limits field -> the least a sandbox starts with (its cgroup's memory.max and pids.max: below
# these bwrap or the agent cannot start, and the sandbox would fail as if the executor had).
# The same floors as CORRAL_SANDBOX_MEMORY_MB and CORRAL_SANDBOX_MAX_PROCESSES.
FLOORS = {"memory_mb": 64, "max_processes": 8}


def limits_problem(limits: task_pb2.Limits, settings: Settings) -> str:
    """What is wrong with `limits` ("" when nothing is), naming the field and the maximum."""
    for field, (ceiling_name, unit) in CEILINGS.items():
        value = getattr(limits, field)
        if value < 0:
            return f"limits.{field} must not be negative"
        floor = FLOORS.get(field, 0)
        if 0 < value < floor:
            return f"limits.{field} {value} is below the least a sandbox runs with ({floor} {unit}; 0 means the default)"
        ceiling = getattr(settings, ceiling_name)
        if value > ceiling:
            return f"limits.{field} {value} exceeds this deployment's maximum of {ceiling} {unit}"
    return ""
