"""The memory store (real, on SQLite) stores an event id once per task: a redelivery of the same
events takes no sequence number and stores nothing, so sequences stay 1, 2, 3... without gaps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from corral.db import create_engine
from corral.v1 import memory_pb2
from services.memory.store import HistoryRecord, InvalidArgument, MemoryStore


def record(task_id: str, event_id: str, action: str) -> HistoryRecord:
    return HistoryRecord(task_id=task_id, kind=memory_pb2.HISTORY_KIND_ACTION, action=action, event_id=event_id)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[MemoryStore]:
    opened = await MemoryStore.open(f"sqlite+aiosqlite:///{tmp_path / 'memory.db'}")
    yield opened
    await opened.close()


async def test_a_redelivered_batch_is_stored_once_under_its_first_sequences(store: MemoryStore) -> None:
    batch = [record("t", f"t/{n}", f"step {n}") for n in range(3)]
    assert await store.append_events("t", batch) == [1, 2, 3]
    assert await store.append_events("t", batch) == [1, 2, 3]  # the executor never got the answer
    # Half old, half new (a retry after more was recorded): only the new ones take sequences.
    more = [*batch[1:], record("t", "t/3", "step 3"), record("t", "t/4", "step 4")]
    assert await store.append_events("t", more) == [2, 3, 4, 5]
    stored = await store.list_events("t")
    assert [r.sequence for r in stored] == [1, 2, 3, 4, 5]
    assert [r.action for r in stored] == [f"step {n}" for n in range(5)]
    assert [r.event_id for r in stored] == [f"t/{n}" for n in range(5)]


async def test_a_copy_within_one_request_is_stored_once(store: MemoryStore) -> None:
    twice = [record("t", "a", "one"), record("t", "a", "one"), record("t", "b", "two")]
    assert await store.append_events("t", twice) == [1, 1, 2]
    assert len(await store.list_events("t")) == 2


async def test_ids_are_per_task_and_events_without_one_are_all_kept(store: MemoryStore) -> None:
    assert await store.append_events("t1", [record("t1", "same", "x")]) == [1]
    assert await store.append_events("t2", [record("t2", "same", "x")]) == [1]
    plain = [record("t1", "", "no id"), record("t1", "", "no id")]
    assert await store.append_events("t1", plain) == [2, 3]
    assert len(await store.list_events("t1")) == 3
    assert len(await store.list_events("t2")) == 1


async def test_finished_says_whether_the_final_entry_is_stored(store: MemoryStore) -> None:
    await store.append_events("t", [record("t", "1", "ls")])
    assert not await store.has_finished("t")
    finished = HistoryRecord(task_id="t", kind=memory_pb2.HISTORY_KIND_TASK_FINISHED, state="completed", event_id="2")
    await store.append_events("t", [finished])
    await store.append_events("t", [finished])
    assert await store.has_finished("t")
    assert [r.sequence for r in await store.list_events("t")] == [1, 2]


async def test_an_over_long_event_id_is_refused_by_name(store: MemoryStore) -> None:
    with pytest.raises(InvalidArgument, match="event_id is longer than"):
        await store.append_events("t", [record("t", "x" * 129, "ls")])


async def test_a_database_made_before_event_ids_gets_the_column_and_index(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    async with engine.begin() as conn:
        # history_events as it was before event ids, with one row.
        await conn.execute(text(
            "CREATE TABLE history_events (id INTEGER PRIMARY KEY AUTOINCREMENT, task_id VARCHAR(128) NOT NULL, "
            "sequence BIGINT NOT NULL, time DATETIME NOT NULL, kind INTEGER NOT NULL, step_index INTEGER NOT NULL, "
            "tool VARCHAR(32) NOT NULL, action TEXT NOT NULL, state VARCHAR(32) NOT NULL, exit_code INTEGER, "
            "stdout TEXT NOT NULL, stderr TEXT NOT NULL, error TEXT NOT NULL, "
            "CONSTRAINT uq_history_task_sequence UNIQUE (task_id, sequence))"
        ))
        await conn.execute(text(
            "INSERT INTO history_events (task_id, sequence, time, kind, step_index, tool, action, state, "
            "stdout, stderr, error) VALUES ('t', 1, '2026-01-01 00:00:00', 2, 0, 'shell', 'old', '', '', '', '')"
        ))
    await engine.dispose()
    store = await MemoryStore.open(url)
    try:
        assert await store.append_events("t", [record("t", "n", "new"), record("t", "n", "new")]) == [2, 2]
        assert [(r.action, r.event_id) for r in await store.list_events("t")] == [("old", ""), ("new", "n")]
    finally:
        await store.close()


async def test_two_replicas_appending_to_one_task_leave_no_gap_or_double(tmp_path: Path) -> None:
    # Each replica keeps the task's last sequence in memory; the other's appends make it stale,
    # which the unique sequence catches: that append is redone from the stored figures.
    url = f"sqlite+aiosqlite:///{tmp_path / 'memory.db'}"
    first, second = await MemoryStore.open(url), await MemoryStore.open(url)
    try:
        got = []
        for n in range(6):
            replica = first if n % 3 else second
            got += await replica.append_events("t", [record("t", f"t/{n}", f"step {n}"), record("t", "", "no id")])
        assert got == list(range(1, 13))
        assert await first.append_events("t", [record("t", "t/4", "step 4")]) == [9]  # redelivered
        assert [r.sequence for r in await second.list_events("t")] == list(range(1, 13))
    finally:
        await first.close()
        await second.close()
