"""The file tools: `read_file`, `write_file` and `list_files`, confined to the step's directory.

Paths are resolved by the sandbox's agent: relative to the task directory (or the sandbox's
workspace), never through `..` or a symlink leading out; non-regular files are refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Literal

from pydantic import Field

from corral.steps.base import StepContext, StepModelBase, StepOutcome, StepTool, require_text
from corral.v1 import task_pb2


class ReadFileStep(StepModelBase):
    tool: Literal["read_file"]
    path: str = Field(min_length=1, description="Relative to the task directory.")


class WriteFileStep(StepModelBase):
    tool: Literal["write_file"]
    path: str = Field(min_length=1, description="Relative to the task directory.")
    content: str = Field(description="Text to write.")


class ReadFileTool(StepTool[ReadFileStep, task_pb2.ReadFileAction]):
    name = "read_file"
    model = ReadFileStep

    def to_proto(self, step: ReadFileStep) -> task_pb2.ReadFileAction:
        return task_pb2.ReadFileAction(path=step.path)

    def check(self, action: task_pb2.ReadFileAction, where: str) -> None:
        require_text(action.path, f"{where}.path")

    def describe(self, action: task_pb2.ReadFileAction) -> str:
        return f"read {action.path}"

    async def run(self, action: task_pb2.ReadFileAction, ctx: StepContext) -> StepOutcome:
        content = await ctx.read_file(action.path)
        if content:
            ctx.output("stdout", content)
        return StepOutcome.done(content)


class WriteFileTool(StepTool[WriteFileStep, task_pb2.WriteFileAction]):
    name = "write_file"
    model = WriteFileStep

    def to_proto(self, step: WriteFileStep) -> task_pb2.WriteFileAction:
        return task_pb2.WriteFileAction(path=step.path, content=step.content)

    def check(self, action: task_pb2.WriteFileAction, where: str) -> None:
        require_text(action.path, f"{where}.path")

    def describe(self, action: task_pb2.WriteFileAction) -> str:
        return f"write {action.path} ({len(action.content.encode())} bytes)"

    async def run(self, action: task_pb2.WriteFileAction, ctx: StepContext) -> StepOutcome:
        path = await ctx.write_file(action.path, action.content)
        return StepOutcome.done(f"wrote {len(action.content.encode())} bytes to {path}\n")


class ListFilesStep(StepModelBase):
    tool: Literal["list_files"]
    path: str = Field(".", min_length=1, description="The directory, relative to the task directory.")


class ListFilesTool(StepTool[ListFilesStep, task_pb2.ListFilesAction]):
    name = "list_files"
    model = ListFilesStep

    def to_proto(self, step: ListFilesStep) -> task_pb2.ListFilesAction:
        return task_pb2.ListFilesAction(path=step.path)

    def check(self, action: task_pb2.ListFilesAction, where: str) -> None:
        require_text(action.path, f"{where}.path")

    def describe(self, action: task_pb2.ListFilesAction) -> str:
        return f"list {action.path}"

    async def run(self, action: task_pb2.ListFilesAction, ctx: StepContext) -> StepOutcome:
        listing = await ctx.list_files(action.path)
        stdout = json.dumps(
            {"path": listing.path, "entries": [asdict(e) for e in listing.entries], "truncated": listing.truncated}
        ) + "\n"
        ctx.output("stdout", stdout)
        return StepOutcome.done(stdout)
