"""The executor's history spool on a real file: order, the bound, reopening after a stop or a
crash (a record cut short), and compaction -- always erring towards sending again."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.v1 import memory_pb2
from services.executor import history_spool
from services.executor.history_spool import HistorySpool, spool_path


def event(n: int, size: int = 10) -> memory_pb2.HistoryEvent:
    return memory_pb2.HistoryEvent(task_id=f"t{n % 3}", event_id=str(n), stdout="x" * size)


def ids(events: list[memory_pb2.HistoryEvent]) -> list[str]:
    return [e.event_id for e in events]


def test_events_come_back_in_order_and_delivered_ones_are_gone_after_a_reopen(tmp_path: Path) -> None:
    path = spool_path(tmp_path, "exec/1")
    assert path.parent == tmp_path / "history-spool" and "/" not in path.name
    spool = HistorySpool(path, 1 << 20)
    for n in range(10):
        assert spool.append(event(n))
    first, offset = spool.read(4, 1 << 20)
    assert ids(first) == ["0", "1", "2", "3"]
    spool.delivered(offset)
    spool.close()

    reopened = HistorySpool(path, 1 << 20)
    rest, offset = reopened.read(100, 1 << 20)
    assert ids(rest) == [str(n) for n in range(4, 10)]
    reopened.delivered(offset)
    assert reopened.pending_bytes == 0 and path.stat().st_size == 0  # emptied once all delivered
    reopened.close()


def test_past_its_bound_the_spool_refuses_and_keeps_what_it_has(tmp_path: Path) -> None:
    one = len(event(0).SerializeToString()) + history_spool.HEADER.size
    spool = HistorySpool(tmp_path / "s.spool", 3 * one)
    assert [spool.append(event(n)) for n in range(5)] == [True, True, True, False, False]
    assert ids(spool.read(10, 1 << 20)[0]) == ["0", "1", "2"]
    spool.close()


def test_a_record_cut_short_by_a_crash_is_cut_off_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = HistorySpool(path, 1 << 20)
    for n in range(3):
        spool.append(event(n))
    spool.close()
    with open(path, "ab") as file:  # the executor died halfway through writing a fourth
        file.write(history_spool.HEADER.pack(500) + b"partial")
    reopened = HistorySpool(path, 1 << 20)
    assert ids(reopened.read(10, 1 << 20)[0]) == ["0", "1", "2"]
    assert reopened.append(event(3))
    assert ids(reopened.read(10, 1 << 20)[0]) == ["0", "1", "2", "3"]
    reopened.close()


def test_a_lost_offset_sends_everything_again_rather_than_skip(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = HistorySpool(path, 1 << 20)
    for n in range(3):
        spool.append(event(n))
    spool.delivered(spool.read(1, 1 << 20)[1])
    spool.close()
    path.with_name(path.name + ".offset").write_text("99999")  # beyond the file: not believed
    reopened = HistorySpool(path, 1 << 20)
    assert ids(reopened.read(10, 1 << 20)[0]) == ["0", "1", "2"]
    reopened.close()


def test_a_spool_that_never_empties_is_compacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history_spool, "COMPACT_AFTER_BYTES", 1000)
    path = tmp_path / "s.spool"
    spool = HistorySpool(path, 1 << 20)
    for n in range(40):
        spool.append(event(n, 100))
    _, offset = spool.read(30, 1 << 20)
    spool.delivered(offset)
    assert path.stat().st_size < 15 * 120  # the 30 delivered are gone from the file
    spool.append(event(40, 100))
    spool.close()
    reopened = HistorySpool(path, 1 << 20)
    assert ids(reopened.read(100, 1 << 20)[0]) == [str(n) for n in range(30, 41)]
    reopened.close()


def test_a_batch_stops_at_its_byte_budget_but_holds_at_least_one(tmp_path: Path) -> None:
    spool = HistorySpool(tmp_path / "s.spool", 1 << 20)
    for n in range(5):
        spool.append(event(n, 1000))
    assert ids(spool.read(100, 1)[0]) == ["0"]
    assert ids(spool.read(100, 2500)[0]) == ["0", "1", "2"]
    spool.close()
