"""How a process step's end is put into words (services/executor/outcome.py)."""

from __future__ import annotations

import signal

import pytest

from services.executor.drivers.base import ProcessResult, SandboxLimits
from services.executor.outcome import describe_failure

LIMITS = SandboxLimits(memory_mb=256, max_processes=64, max_file_size_mb=8, max_output_bytes=1024, disk_mb=100)


@pytest.mark.parametrize(
    ("result", "kind", "words"),
    [
        (ProcessResult(exit_code=0), "shell", ""),
        (ProcessResult(exit_code=3), "shell", "exited with code 3"),
        (ProcessResult(exit_code=None, timed_out=True), "shell", "timed out after 5s"),
        (ProcessResult(exit_code=None, killed=True), "shell", "cancelled"),
        (ProcessResult(exit_code=None, signal=signal.SIGXFSZ), "shell", "exceeded the file size limit (8 MiB)"),
        (ProcessResult(exit_code=None, signal=signal.SIGSEGV), "python", "probably exceeded the memory limit (256 MiB)"),
        (ProcessResult(exit_code=None, signal=signal.SIGTERM), "shell", "killed by SIGTERM"),
        (
            ProcessResult(exit_code=2, stderr="main.ts:1:9 - error TS1109: Expression expected.\n"),
            "typescript",
            "TypeScript compile error: main.ts:1:9 - error TS1109",
        ),
        (ProcessResult(exit_code=None, error="could not start /bin/sh"), "shell", "could not start /bin/sh"),
    ],
)
def test_failures_are_described(result: ProcessResult, kind: str, words: str) -> None:
    described = describe_failure(result, LIMITS, 5, kind)
    assert (words in described) if words else described == ""
