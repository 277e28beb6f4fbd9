"""Corral's SDK over the REST gateway: what an agent's code imports (`from corral import Sandbox`).

`Sandbox` (blocking) and `AsyncSandbox` (asyncio) have the same methods: `run_shell`,
`run_python`, `run_typescript`, `read_file`, `write_file`, `files.*`, `screenshot`, `click`,
`type`, `key`, `create_code_context` / `run_code` (a Jupyter kernel's rich results)..., plus `run_task` / `run_task_async` for one-shot tasks. The gateway's URL and
API key come from the arguments, else CORRAL_URL / CORRAL_API_KEY. Failures raise the
`corral.errors` tree (NotFound, Unauthenticated, QuotaExceeded, Timeout...), and `CommandFailed`
for a command run with `check=True` that failed.
"""

from corral.sdk.aio import AsyncCommandHandle, AsyncCommandStream, AsyncSandbox, run_task_async
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
from corral.sdk.sync import CommandHandle, CommandStream, Sandbox, run_task

__all__ = [
    "AsyncCommandHandle",
    "AsyncCommandStream",
    "AsyncSandbox",
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
    "TaskResult",
    "Timeout",
    "run_task",
    "run_task_async",
]
