"""The process tools: `shell` (a /bin/sh -c command), `python` and `typescript` (source code).

The sandbox's agent runs them in the step's working directory; their output streams as it is
produced; the error says which limit or timeout ended them.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from corral.steps.base import (
    ProcessKind,
    StepContext,
    StepModelBase,
    StepOutcome,
    StepTool,
    require_text,
)
from corral.v1 import task_pb2


class ShellStep(StepModelBase):
    tool: Literal["shell"]
    command: str = Field(min_length=1, description="Run with /bin/sh -c in the step's directory.")


class PythonStep(StepModelBase):
    tool: Literal["python"]
    code: str = Field(min_length=1, description="Python 3 source.")


class TypeScriptStep(StepModelBase):
    tool: Literal["typescript"]
    code: str = Field(min_length=1, description="TypeScript source, type-checked strictly.")


class ShellTool(StepTool[ShellStep, task_pb2.ShellAction]):
    name = "shell"
    model = ShellStep

    def to_proto(self, step: ShellStep) -> task_pb2.ShellAction:
        return task_pb2.ShellAction(command=step.command)

    def check(self, action: task_pb2.ShellAction, where: str) -> None:
        require_text(action.command, f"{where}.command")

    def describe(self, action: task_pb2.ShellAction) -> str:
        return action.command

    async def run(self, action: task_pb2.ShellAction, ctx: StepContext) -> StepOutcome:
        return await ctx.run_process("shell", action.command)


class _CodeTool(StepTool[PythonStep | TypeScriptStep, task_pb2.PythonAction | task_pb2.TypeScriptAction]):
    kind: ClassVar[ProcessKind]

    def check(self, action: task_pb2.PythonAction | task_pb2.TypeScriptAction, where: str) -> None:
        require_text(action.code, f"{where}.code")

    def describe(self, action: task_pb2.PythonAction | task_pb2.TypeScriptAction) -> str:
        return action.code

    async def run(
        self, action: task_pb2.PythonAction | task_pb2.TypeScriptAction, ctx: StepContext
    ) -> StepOutcome:
        return await ctx.run_process(self.kind, action.code)


class PythonTool(_CodeTool):
    name = "python"
    kind = "python"
    model = PythonStep

    def to_proto(self, step: PythonStep | TypeScriptStep) -> task_pb2.PythonAction:
        return task_pb2.PythonAction(code=step.code)


class TypeScriptTool(_CodeTool):
    name = "typescript"
    kind = "typescript"
    model = TypeScriptStep

    def to_proto(self, step: PythonStep | TypeScriptStep) -> task_pb2.TypeScriptAction:
        return task_pb2.TypeScriptAction(code=step.code)
