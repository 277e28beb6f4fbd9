"""The step-tool registry: every tool a task's steps may use, and the checks of a whole task.

Adding a tool: write its module here (JSON model, proto mapping, `check`, `describe`, `run`:
see base.StepTool), add its action message to the proto `Step` oneof (protos/corral/v1/task.proto,
field name = tool name), and list it below in `TOOLS` and `StepModel`. If it needs something new
from the sandbox, that is one operation in the agent protocol (sandbox/runtime) and one method
on the executor's StepContext.
"""

from __future__ import annotations

from typing import Annotated, Any

from google.protobuf import duration_pb2
from pydantic import Field

from corral.config import Settings
from corral.errors import InvalidArgument, InvalidTask
from corral.limits import limits_problem
from corral.network_rules import NetworkRules
from corral.steps.base import StepContext, StepFailed, StepModelBase, StepOutcome, StepTool
from corral.steps.files import (
    ListFilesStep,
    ListFilesTool,
    ReadFileStep,
    ReadFileTool,
    WriteFileStep,
    WriteFileTool,
)
from corral.steps.gui import GuiStep, GuiTool
from corral.steps.process import PythonStep, PythonTool, ShellStep, ShellTool, TypeScriptStep, TypeScriptTool
from corral.v1 import task_pb2

TOOLS: dict[str, StepTool[Any, Any]] = {
    tool.name: tool
    for tool in (
        ShellTool(), PythonTool(), TypeScriptTool(), ReadFileTool(), WriteFileTool(), GuiTool(), ListFilesTool()
    )
}
TOOL_NAMES = tuple(TOOLS)

# The JSON of one step, discriminated by `tool` (gui steps again by `action`).
StepModel = Annotated[
    ShellStep | PythonStep | TypeScriptStep | ReadFileStep | WriteFileStep | GuiStep | ListFilesStep,
    Field(discriminator="tool"),
]

MAX_STEPS = 1000


def step_tool(step: task_pb2.Step) -> str:
    """The tool name of a proto step ('' when no action is set)."""
    return step.WhichOneof("action") or ""


def tool_of(step: task_pb2.Step) -> tuple[StepTool[Any, Any], Any] | None:
    """The step's tool and its action message, or None when the step has no action."""
    name = step.WhichOneof("action")
    if name is None:
        return None
    return TOOLS[name], getattr(step, name)


def describe(step: task_pb2.Step) -> str:
    """What the step does, human-readable, for agent.log and history."""
    found = tool_of(step)
    return found[0].describe(found[1]) if found else "(no action)"


def needs_desktop(spec: task_pb2.TaskSpec) -> bool:
    return spec.desktop or any((found := tool_of(s)) is not None and found[0].needs_desktop for s in spec.steps)


def step_to_proto(step: StepModelBase) -> task_pb2.Step:
    """One JSON step (a model from StepModel) as the proto Step."""
    tool_name: str = getattr(step, "tool")  # noqa: B009 - every step model has its Literal tool
    out = task_pb2.Step(continue_on_error=step.continue_on_error)
    if step.timeout is not None:
        out.timeout.FromNanoseconds(int(step.timeout * 1e9))
    getattr(out, tool_name).CopyFrom(TOOLS[tool_name].to_proto(step))
    return out


def check_spec(spec: task_pb2.TaskSpec, settings: Settings) -> None:
    """Raises InvalidTask naming the field when the task cannot run under this deployment.

    The one check of a task: the scheduler calls it at submission, the executor at admission.
    """
    if not spec.steps:
        raise InvalidTask("a task needs at least one step")
    if len(spec.steps) > MAX_STEPS:
        raise InvalidTask(f"a task has at most {MAX_STEPS} steps, got {len(spec.steps)}")
    maximum = settings.max_step_timeout_seconds
    if spec.HasField("step_timeout"):
        _check_timeout(_seconds(spec.step_timeout), "step_timeout", maximum)
    for index, step in enumerate(spec.steps):
        found = tool_of(step)
        if found is None:
            raise InvalidTask(f"steps[{index}] has no action (set one of: {', '.join(TOOL_NAMES)})")
        tool, action = found
        tool.check(action, f"steps[{index}].{tool.name}")
        if step.HasField("timeout"):
            _check_timeout(_seconds(step.timeout), f"steps[{index}].timeout", maximum)
    for name, value in spec.env.items():
        if not name or "=" in name or "\0" in name:
            raise InvalidTask(f"env has an invalid variable name {name!r}")
        if "\0" in value:
            raise InvalidTask(f"env.{name} contains a NUL character (no environment variable can hold one)")
    problem = limits_problem(spec.limits, settings)
    if problem:
        raise InvalidTask(problem)
    check_network_rules(spec.network, spec.network_rules, InvalidTask)
    if spec.sandbox_id and (spec.network_rules.allow or spec.network_rules.deny):
        raise InvalidTask(
            "network rules of a task run in a sandbox are the sandbox's: change them with "
            "PUT /v1/sandboxes/{id}/network"
        )


def check_network_rules(
    network: bool, rules: task_pb2.NetworkRules, error: type[InvalidArgument] = InvalidArgument
) -> NetworkRules:
    """The rules parsed; raises `error` naming the bad rule, or rules given without network."""
    if not network and (rules.allow or rules.deny):
        raise error("network rules are given but network is off (send \"network\": {\"allow\": [...]})")
    try:
        return NetworkRules.from_proto(rules)
    except InvalidArgument as exc:
        raise error(str(exc)) from None


def _seconds(duration: duration_pb2.Duration) -> float:
    # Not ToTimedelta: a timedelta overflows at ~1e14 s, where a Duration goes on to ~9e18.
    return duration.seconds + duration.nanos / 1e9


def _check_timeout(seconds: float, where: str, maximum: float) -> None:
    if seconds <= 0:
        raise InvalidTask(f"{where} must be positive")
    if seconds > maximum:
        raise InvalidTask(f"{where} {seconds:g}s exceeds this deployment's maximum of {maximum:g}s")


__all__ = [
    "MAX_STEPS",
    "TOOLS",
    "TOOL_NAMES",
    "InvalidTask",
    "StepContext",
    "StepFailed",
    "StepModel",
    "StepModelBase",
    "StepOutcome",
    "StepTool",
    "check_network_rules",
    "check_spec",
    "describe",
    "needs_desktop",
    "step_to_proto",
    "step_tool",
    "tool_of",
]
