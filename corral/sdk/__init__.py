"""Corral's SDK over the REST gateway: what an agent's code imports (`from corral import Sandbox`).

`Sandbox` (blocking) and `AsyncSandbox` (asyncio) have the same methods: `run_shell`,
`run_python`, `run_typescript`, `read_file`, `write_file`, `files.*`, `screenshot`, `click`,
`type`, `key`..., plus `run_task` / `run_task_async` for one-shot tasks. The gateway's URL and
API key come from the arguments, else CORRAL_URL / CORRAL_API_KEY. Failures raise the
`corral.errors` tree (NotFound, Unauthenticated, QuotaExceeded, Timeout...), and `CommandFailed`
for a command run with `check=True` that failed.
"""

from corral.sdk.aio import AsyncCommandHandle, AsyncCommandStream, AsyncSandbox, run_task_async
from corral.sdk.results import (
    CommandFailed,
    CommandResult,
    FileInfo,
    OutputChunk,
    StepOutcome,
    TaskResult,
    Timeout,
)
from corral.sdk.sync import CommandHandle, CommandStream, Sandbox, run_task

__all__ = [
    "AsyncCommandHandle",
    "AsyncCommandStream",
    "AsyncSandbox",
    "CommandFailed",
    "CommandHandle",
    "CommandResult",
    "CommandStream",
    "FileInfo",
    "OutputChunk",
    "Sandbox",
    "StepOutcome",
    "TaskResult",
    "Timeout",
    "run_task",
    "run_task_async",
]
