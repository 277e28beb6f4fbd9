"""Output previews: bounded in bytes, never a split character, and the budget of a status."""

from __future__ import annotations

from corral.output_preview import clip_result, drop_outputs, pieces, preview, within_budget
from corral.v1 import task_pb2


def test_preview_is_bounded_in_bytes_and_never_splits_a_character() -> None:
    text = "é" * 1000  # 2 bytes each
    kept, clipped = preview(text, 1001)
    assert clipped and kept == "é" * 500 and len(kept.encode()) <= 1001
    assert preview("short", 1024) == ("short", False)
    assert preview("é" * 512, 1024) == ("é" * 512, False)  # exactly the limit


def test_pieces_cover_the_text_in_order() -> None:
    text = "".join(chr(65 + i % 26) for i in range(10_001))
    parts = list(pieces(text, 1000))
    assert "".join(parts) == text and len(parts) == 11 and max(map(len, parts)) == 1000


def test_a_result_carries_previews_and_whole_sizes() -> None:
    result = task_pb2.StepResult(index=0)
    clip_result(result, "o" * 5000, "e" * 10, 1024)
    assert result.stdout == "o" * 1024 and result.stdout_clipped and result.stdout_bytes == 5000
    assert result.stderr == "e" * 10 and not result.stderr_clipped and result.stderr_bytes == 10


def test_a_status_keeps_to_its_budget_in_step_order() -> None:
    task = task_pb2.Task(steps=[task_pb2.StepResult(index=i, stdout="x" * 600, stderr="y" * 600) for i in range(3)])
    within_budget(task, 1500)
    kept = [(len(s.stdout), len(s.stderr)) for s in task.steps]
    assert kept == [(600, 600), (300, 0), (0, 0)]
    assert [s.stdout_clipped for s in task.steps] == [False, True, True]
    assert all(s.stdout_bytes == 600 and s.stderr_bytes == 600 for s in task.steps)  # sizes of the whole


def test_a_listing_step_has_no_output_but_says_there_is_some() -> None:
    result = task_pb2.StepResult(stdout="abc")
    drop_outputs(result)
    assert result.stdout == "" and result.stdout_clipped and result.stdout_bytes == 3
    assert not result.stderr_clipped  # there was none
