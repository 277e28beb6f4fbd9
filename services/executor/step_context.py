"""The executor's StepContext: what a step tool (corral/steps) may do, for one step of one task.

It turns the tools' requests into calls on the task's sandbox (through its SandboxLease) and
their failures into words: a refused path or a missing desktop is a StepFailed, a process's
end is described with the limits it ran under.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from corral.config import Settings
from corral.steps import StepFailed, StepOutcome
from corral.steps.base import Listing, ProcessKind, StreamName
from corral.v1 import gui_pb2_grpc
from services.executor.drivers.base import FileRefused, OutputCallback, ProcessRequest, ProcessResult, Sandbox
from services.executor.gui_client import ScreenshotWriter
from services.executor.lease import SandboxLease
from services.executor.outcome import describe_failure

T = TypeVar("T")


def process_outcome(result: ProcessResult, error: str) -> StepOutcome:
    if result.exit_code is not None:
        exit_code: int | None = result.exit_code
    elif result.signal is not None:
        exit_code = -result.signal
    else:
        exit_code = None
    return StepOutcome(
        ok=result.ok,
        stdout=result.stdout,
        stderr=result.stderr,
        exit_code=exit_code,
        timed_out=result.timed_out,
        stdout_truncated=result.stdout_truncated,
        stderr_truncated=result.stderr_truncated,
        error=error,
    )


class ExecutorStepContext:
    def __init__(
        self, settings: Settings, lease: SandboxLease, index: int, timeout: float, on_output: OutputCallback
    ) -> None:
        self.settings = settings
        self.lease = lease
        self._index = index
        self._timeout = timeout
        self._on_output = on_output

    @property
    def index(self) -> int:
        return self._index

    @property
    def timeout(self) -> float:
        return self._timeout

    def output(self, stream: StreamName, data: str) -> None:
        self._on_output(stream, data)

    async def run_process(self, kind: ProcessKind, code: str) -> StepOutcome:
        sandbox = await self.lease.sandbox()
        request = ProcessRequest(
            kind=kind, timeout=self._timeout, code=code, env=self.lease.step_env, cwd=self.lease.cwd
        )
        result = await sandbox.run(request, self._on_output)
        return process_outcome(result, describe_failure(result, self.lease.limits, self._timeout, kind))

    async def _file_op(self, op: Callable[[Sandbox], Awaitable[T]]) -> T:
        """A file operation on the task's sandbox under the step's timeout; a refused path
        (FileRefused) fails the step with the agent's words."""
        sandbox = await self.lease.sandbox()
        try:
            async with asyncio.timeout(self._timeout):
                return await op(sandbox)
        except FileRefused as exc:
            raise StepFailed(str(exc)) from None

    async def read_file(self, path: str) -> str:
        cwd, roots = self.lease.cwd, self.lease.file_roots
        return await self._file_op(
            lambda sandbox: sandbox.read_file(path, self.settings.max_read_file_bytes, cwd=cwd, roots=roots)
        )

    async def write_file(self, path: str, content: str) -> str:
        cwd, roots = self.lease.cwd, self.lease.file_roots
        return await self._file_op(
            lambda sandbox: sandbox.write_file(path, content, self.settings.max_write_file_bytes, cwd=cwd, roots=roots)
        )

    async def list_files(self, path: str) -> Listing:
        cwd, roots = self.lease.cwd, self.lease.file_roots
        return await self._file_op(
            lambda sandbox: sandbox.list_files(path, self.settings.max_list_entries, cwd=cwd, roots=roots)
        )

    async def gui(self) -> gui_pb2_grpc.GuiServiceAsyncStub:
        await self.lease.sandbox()
        return self.lease.gui().stub

    async def save_screenshot(self, name: str, png: bytes) -> str:
        assert self.lease.task_dir_fd is not None  # opened before any step runs
        writer = ScreenshotWriter(self.lease.task_dir_fd, self.lease.task_dir)
        return await asyncio.to_thread(writer.save, name, png)
