"""A step's output kept small wherever it travels whole: a result carries a bounded preview and
the whole output's size, and the whole output travels as `output` events of bounded pieces.

Every hop (executor -> scheduler -> store -> gateway) then moves messages far below the gRPC
limit whatever output a task's limits allow: the limit is per stream and per step, and up to
64 MiB by default (max_task_output_bytes), while one gRPC message is at most 64 MiB.
"""

from __future__ import annotations

from collections.abc import Iterator

from corral.v1 import task_pb2

# Characters per `output` event: at most 4 bytes each in UTF-8, so a piece stays <= 1 MiB.
OUTPUT_PIECE_CHARS = 256 * 1024
# Output bytes (all steps, both streams) one task's status carries at most; steps past it
# carry an empty preview (clipped, their size still given).
STATUS_OUTPUT_BUDGET = 8 * 1024 * 1024


def pieces(data: str, size: int = OUTPUT_PIECE_CHARS) -> Iterator[str]:
    """`data` in consecutive pieces of at most `size` characters."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def preview(text: str, limit: int) -> tuple[str, bool]:
    """The first `limit` bytes (UTF-8) of `text`, never splitting a character; and whether
    that is less than all of it."""
    if len(text) * 4 <= limit:
        return text, False  # fits whatever its characters
    encoded = text.encode()
    if len(encoded) <= limit:
        return text, False
    return encoded[:limit].decode("utf-8", "ignore"), True


def clip_result(result: task_pb2.StepResult, stdout: str, stderr: str, limit: int) -> None:
    """Sets the result's outputs to previews of `stdout` and `stderr` (with their sizes)."""
    result.stdout, result.stdout_clipped = preview(stdout, limit)
    result.stderr, result.stderr_clipped = preview(stderr, limit)
    result.stdout_bytes = len(stdout.encode())
    result.stderr_bytes = len(stderr.encode())


def drop_outputs(result: task_pb2.StepResult) -> None:
    """No output at all (a listing's steps): sizes stay, clipped says there is more."""
    _size_known(result)
    for stream in ("stdout", "stderr"):
        if getattr(result, stream):
            setattr(result, stream, "")
            setattr(result, f"{stream}_clipped", True)


def within_budget(task: task_pb2.Task, budget: int = STATUS_OUTPUT_BUDGET) -> None:
    """Clips the task's step outputs, in step order, to `budget` bytes in all."""
    left = budget
    for result in task.steps:
        _size_known(result)
        for stream in ("stdout", "stderr"):
            text = getattr(result, stream)
            if not text:
                continue
            kept, clipped = preview(text, left)
            if clipped:
                setattr(result, stream, kept)
                setattr(result, f"{stream}_clipped", True)
            left = max(0, left - len(kept.encode()))


def _size_known(result: task_pb2.StepResult) -> None:
    """Results stored before sizes existed carry their whole output: its size is its own."""
    for stream in ("stdout", "stderr"):
        text = getattr(result, stream)
        if text and not getattr(result, f"{stream}_bytes") and not getattr(result, f"{stream}_clipped"):
            setattr(result, f"{stream}_bytes", len(text.encode()))
