"""Corral's SDK over the REST gateway: what an agent's code imports (`from corral import Sandbox`).

`Sandbox` (blocking) and `AsyncSandbox` (asyncio) have the same methods: `run_shell`,
`run_python`, `run_typescript`, `read_file`, `write_file`, `files.*`, `screenshot`, `click`,
`type`, `key`..., plus `run_task` / `run_task_async` for one-shot tasks. The gateway's URL and
API key come from the arguments, else CORRAL_URL / CORRAL_API_KEY. Failures raise the
`corral.errors` tree (NotFound, Unauthenticated, QuotaExceeded, Timeout...), and `CommandFailed`
for a command run with `check=True` that failed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.sdk.aio import AsyncCommandHandle, AsyncCommandStream, AsyncSandbox, AsyncTask, run_task_async
    from corral.sdk.results import (
        CodeContext,
        CommandFailed,
        CommandResult,
        Execution,
        ExecutionError,
        FileInfo,
        Logs,
        OutputChunk,
        Result,
        StepOutcome,
        TaskResult,
        Timeout,
    )
    from corral.sdk.sync import CommandHandle, CommandStream, Sandbox, Task, run_task

__all__ = [
    "AsyncCommandHandle",
    "AsyncCommandStream",
    "AsyncSandbox",
    "AsyncTask",
    "CodeContext",
    "CommandFailed",
    "CommandHandle",
    "CommandResult",
    "CommandStream",
    "Execution",
    "ExecutionError",
    "FileInfo",
    "Logs",
    "OutputChunk",
    "Result",
    "Sandbox",
    "StepOutcome",
    "Task",
    "TaskResult",
    "Timeout",
    "run_task",
    "run_task_async",
]

# Where each name lives; a module is imported when one of its names is first asked for, so the
# blocking client (the CLI's) does not load asyncio's.
_MODULES = {
    **dict.fromkeys(("AsyncCommandHandle", "AsyncCommandStream", "AsyncSandbox", "AsyncTask", "run_task_async"), "aio"),
    **dict.fromkeys(("CommandHandle", "CommandStream", "Sandbox", "Task", "run_task"), "sync"),
    **dict.fromkeys(("CodeContext", "CommandFailed", "CommandResult", "Execution", "ExecutionError", "FileInfo",
                     "Logs", "OutputChunk", "Result", "StepOutcome", "TaskResult", "Timeout"), "results"),
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'corral.sdk' has no attribute {name!r}")
    return getattr(importlib.import_module(f"corral.sdk.{module}"), name)
