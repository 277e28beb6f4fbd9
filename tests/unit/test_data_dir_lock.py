"""The executor's data directory lock: one holder at a time, free again once released."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.executor.data_dir_lock import DataDirInUse, lock_data_dir


def test_a_held_data_directory_is_refused_until_released(tmp_path: Path) -> None:
    held = lock_data_dir(tmp_path / "data")  # made if missing
    assert (tmp_path / "data" / "executor.lock").read_text() == f"{os.getpid()}\n"
    # flock is per open file: a second open in this very process is refused like another process.
    with pytest.raises(DataDirInUse, match=f"in use by another executor \\(pid {os.getpid()} holds"):
        lock_data_dir(tmp_path / "data")
    held.release()
    held.release()  # twice is harmless
    lock_data_dir(tmp_path / "data").release()


def test_a_symlinked_lock_file_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "elsewhere").write_text("untouched")
    (tmp_path / "data" / "executor.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        lock_data_dir(tmp_path / "data")
    assert (tmp_path / "elsewhere").read_text() == "untouched"
