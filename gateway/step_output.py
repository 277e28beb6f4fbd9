"""A step's whole output as raw bytes, read in pieces from the task's stored `output` events.

Results (GET /status, /v1/tasks/{id}) carry a bounded preview of each stream; this is the
rest. It follows the scheduler's WatchTask at the client's pace (no buffering here) and ends
at the step's `step_finished` (or the task's `finished`), so it also streams a running step.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from corral.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2

STREAMS = {"stdout": task_pb2.OUTPUT_STREAM_STDOUT, "stderr": task_pb2.OUTPUT_STREAM_STDERR}


async def step_output(
    scheduler: scheduler_pb2_grpc.SchedulerServiceAsyncStub,
    task_id: str,
    index: int,
    stream: str,
    caller: tuple[tuple[str, str], ...] = (),
) -> AsyncIterator[bytes]:
    """The UTF-8 bytes step `index` wrote to `stream`, piece by piece."""
    wanted = STREAMS[stream]
    call = scheduler.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task_id, after_sequence=0), metadata=caller)
    try:
        async for response in call:
            event = response.event
            kind = event.WhichOneof("event")
            if kind == "output":
                if event.output.index == index and event.output.stream == wanted:
                    yield event.output.data.encode()
            elif kind == "finished" or (kind == "step_finished" and event.step_finished.result.index == index):
                return
    finally:
        call.cancel()  # the client went away, or the step's output is all out
