"""Corral: sandboxes for the work of AI coding agents.

    from corral import Sandbox          # the SDK (corral/sdk/), loaded on first use
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The SDK's names, imported when first asked for: `import corral` (the CLI, the services)
# stays cheap.
__all__ = [
    "AsyncSandbox", "AsyncTask", "CommandFailed", "CommandResult", "FileInfo", "OutputChunk", "Sandbox",
    "Task", "TaskResult", "Timeout", "run_task", "run_task_async",
]
_SDK_NAMES = frozenset(__all__)

if TYPE_CHECKING:
    from corral.sdk import (
        AsyncSandbox,
        AsyncTask,
        CommandFailed,
        CommandResult,
        FileInfo,
        OutputChunk,
        Sandbox,
        Task,
        TaskResult,
        Timeout,
        run_task,
        run_task_async,
    )


def __getattr__(name: str) -> Any:
    if name in _SDK_NAMES:
        import corral.sdk

        return getattr(corral.sdk, name)
    raise AttributeError(f"module 'corral' has no attribute {name!r}")

