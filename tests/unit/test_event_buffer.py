"""The executor's per-task event buffer: numbered without gaps, read from any point, spilled to
its file past the memory bound and read back the same, followed live until closed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from corral.v1 import task_pb2
from services.executor.event_buffer import EventBuffer


def output(i: int, size: int = 100) -> task_pb2.TaskEvent:
    return task_pb2.TaskEvent(task_id="t", output=task_pb2.OutputChunk(index=0, data=f"{i}:" + "x" * size))


async def test_events_spilled_past_the_bound_read_back_the_same(tmp_path: Path) -> None:
    buffer = EventBuffer(tmp_path / "t.events", memory_limit=1000)
    for i in range(50):
        buffer.append(output(i))
    assert (tmp_path / "t.events").stat().st_size > 0  # 50 x ~110 bytes went past 1000
    events = buffer.read(0, limit=1000)
    assert [e.sequence for e in events] == list(range(1, 51))
    assert [e.output.data.split(":")[0] for e in events] == [str(i) for i in range(50)]
    assert [e.sequence for e in buffer.read(47)] == [48, 49, 50]  # from the middle: memory and file
    assert [e.sequence for e in buffer.read(3, limit=2)] == [4, 5]
    buffer.discard()
    assert not (tmp_path / "t.events").exists()


async def test_a_reader_follows_live_until_the_buffer_closes(tmp_path: Path) -> None:
    buffer = EventBuffer(tmp_path / "t.events", memory_limit=10_000)
    buffer.append(output(0))

    async def read_all(after: int) -> list[int]:
        return [e.sequence async for e in buffer.follow(after)]

    reader = asyncio.create_task(read_all(0))
    late = asyncio.create_task(read_all(2))
    await asyncio.sleep(0)
    for i in range(1, 4):
        buffer.append(output(i))
        await asyncio.sleep(0)
    buffer.close()
    assert await asyncio.wait_for(reader, 5) == [1, 2, 3, 4]
    assert await asyncio.wait_for(late, 5) == [3, 4]
