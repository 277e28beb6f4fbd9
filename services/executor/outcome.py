"""Words for how a process step ended: which limit it hit, its timeout, the compiler's verdict.

Driver-independent: it reads only the ProcessResult and the limits the step ran under.
Limit detection is best effort (a program may catch its MemoryError and exit 0, say).
"""

from __future__ import annotations

import signal

from services.executor.drivers.base import ProcessResult, SandboxLimits

MEMORY_MARKERS = (
    "MemoryError",
    "JavaScript heap out of memory",
    "Failed to reserve virtual memory",
    "Cannot allocate memory",
    "std::bad_alloc",
    "out of memory",
)
FILE_SIZE_MARKERS = ("File too large", "EFBIG")
DISK_FULL_MARKERS = ("No space left on device", "ENOSPC")
PROCESS_LIMIT_MARKERS = ("Resource temporarily unavailable", "BlockingIOError", "fork: retry", "EAGAIN")
# Signals a process under RLIMIT_AS commonly dies of when an allocation fails.
MEMORY_SIGNALS = (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGTRAP, signal.SIGKILL)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_failure(
    result: ProcessResult, limits: SandboxLimits, timeout: float, kind: str
) -> str:
    """The step's error text; empty when it succeeded."""
    if result.error:
        return result.error
    if result.timed_out:
        return f"timed out after {timeout:g}s (the step's whole process tree was killed)"
    if result.killed:
        return "cancelled"
    stderr = result.stderr
    if result.signal is not None:
        if result.signal == signal.SIGXFSZ:
            return f"killed: exceeded the file size limit ({limits.max_file_size_mb} MiB)"
        name = _signal_name(result.signal)
        if result.signal in MEMORY_SIGNALS and (
            result.signal != signal.SIGKILL or _mentions(stderr, MEMORY_MARKERS)
        ):
            return f"killed by {name}: probably exceeded the memory limit ({limits.memory_mb} MiB)"
        return f"killed by {name}"
    if result.exit_code is None or result.exit_code == 0:
        return ""
    base = f"exited with code {result.exit_code}"
    if kind == "typescript" and result.exit_code == 2 and "error TS" in stderr:
        first = next(line for line in stderr.splitlines() if "error TS" in line)
        return f"TypeScript compile error: {first}"
    if result.exit_code == 128 + signal.SIGXFSZ:
        # A shell reports a child killed by SIGXFSZ as 128 + 25.
        return f"{base}: a process was killed for exceeding the file size limit ({limits.max_file_size_mb} MiB)"
    if _mentions(stderr, MEMORY_MARKERS):
        return f"{base}: exceeded the memory limit ({limits.memory_mb} MiB)"
    if _mentions(stderr, FILE_SIZE_MARKERS):
        return f"{base}: exceeded the file size limit ({limits.max_file_size_mb} MiB)"
    if _mentions(stderr, DISK_FULL_MARKERS):
        return f"{base}: no space left on device (a size-limited filesystem of the sandbox, e.g. /tmp, is full)"
    if _mentions(stderr, PROCESS_LIMIT_MARKERS):
        return f"{base}: process limit reached ({limits.max_processes} processes)"
    return base


def _mentions(text: str, markers: tuple[str, ...]) -> bool:
    return any(marker in text for marker in markers)
