"""Host-side directory handling never follows what a sandbox planted (DESIGN §2b)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.executor.drivers.base import make_sandbox_dir


def test_a_new_directory_is_handed_over_through_its_descriptor(tmp_path: Path) -> None:
    target = tmp_path / "tasks" / "t1"
    make_sandbox_dir(target, None, 0o751)
    assert target.is_dir() and not target.is_symlink()
    assert target.stat().st_mode & 0o777 == 0o751


def test_a_planted_symlink_is_refused_and_its_target_left_alone(tmp_path: Path) -> None:
    outside = tmp_path / "host-dir"
    outside.mkdir(mode=0o700)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "t1").symlink_to(outside)
    with pytest.raises(OSError):
        make_sandbox_dir(tasks / "t1", (os.getuid(), os.getgid()), 0o777)
    assert outside.stat().st_mode & 0o777 == 0o700  # not chmodded through the link


def test_a_planted_fifo_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "run")
    with pytest.raises(OSError):
        make_sandbox_dir(tmp_path / "run", None, 0o755)
