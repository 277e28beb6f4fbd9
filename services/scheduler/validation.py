"""Checks a submitted TaskSpec and says precisely what is wrong with it."""

from __future__ import annotations

from corral.config import Settings
from corral.errors import InvalidTask
from corral.limits import limits_problem
from corral.schema import TOOLS, step_tool
from corral.v1 import task_pb2

MAX_STEPS = 1000
_REQUIRED_TEXT = {
    "shell": ("command",),
    "python": ("code",),
    "typescript": ("code",),
    "read_file": ("path",),
    "write_file": ("path",),
    "gui": ("action",),
}


def validate_spec(spec: task_pb2.TaskSpec, settings: Settings) -> None:
    if not spec.steps:
        raise InvalidTask("a task needs at least one step")
    if len(spec.steps) > MAX_STEPS:
        raise InvalidTask(f"a task has at most {MAX_STEPS} steps, got {len(spec.steps)}")
    if spec.HasField("step_timeout") and spec.step_timeout.ToNanoseconds() <= 0:
        raise InvalidTask("step_timeout must be positive")
    for index, step in enumerate(spec.steps):
        tool = step_tool(step)
        if not tool:
            raise InvalidTask(f"steps[{index}] has no action (set one of: {', '.join(TOOLS)})")
        action = getattr(step, tool)
        for field in _REQUIRED_TEXT[tool]:
            if not getattr(action, field):
                raise InvalidTask(f"steps[{index}].{tool}.{field} is empty")
        if step.HasField("timeout") and step.timeout.ToNanoseconds() <= 0:
            raise InvalidTask(f"steps[{index}].timeout must be positive")
    for name in spec.env:
        if not name or "=" in name or "\0" in name:
            raise InvalidTask(f"env has an invalid variable name {name!r}")
    problem = limits_problem(spec.limits, settings)
    if problem:
        raise InvalidTask(problem)
