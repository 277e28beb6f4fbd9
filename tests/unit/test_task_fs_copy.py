"""task_fs.copy_tree: what a task leaves on its own filesystem, copied out as cp used to (links as
links, hard links and holes kept; set-id bits, FIFOs, sockets and devices left behind)."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from services.executor.task_fs import copy_tree

MIB = 1024 * 1024


def test_copy_keeps_links_holes_and_attributes_and_drops_what_the_host_must_not_get(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "data.txt").write_text("hello\n")
    os.chmod(source / "sub" / "data.txt", 0o640)
    os.utime(source / "sub" / "data.txt", ns=(1_000_000_000, 2_000_000_000))
    os.link(source / "sub" / "data.txt", source / "hard.txt")
    os.symlink("/etc/shadow", source / "escape")  # copied as a link, never followed
    with open(source / "sparse", "wb") as f:  # 64 MiB apparent, one block of data
        f.seek(32 * MIB)
        f.write(b"x")
        f.truncate(64 * MIB)
    (source / "setuid").write_bytes(b"#!/bin/sh\n")
    os.chmod(source / "setuid", 0o6755)
    os.mkfifo(source / "fifo")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(source / "sock"))
    deep = source
    for _ in range(200):  # deeper than a recursive walk would like, short of PATH_MAX
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "bottom").write_text("end")
    os.utime(source / "sub", ns=(3_000_000_000, 4_000_000_000))

    tree = tmp_path / "tree"
    copy_tree(source, tree)

    assert (tree / "sub" / "data.txt").read_text() == "hello\n"
    copied = os.stat(tree / "sub" / "data.txt")
    assert stat.S_IMODE(copied.st_mode) == 0o640 and copied.st_mtime_ns == 2_000_000_000
    assert os.stat(tree / "hard.txt").st_ino == copied.st_ino  # still one file
    assert os.readlink(tree / "escape") == "/etc/shadow"
    assert os.stat(tree / "sub").st_mtime_ns == 4_000_000_000  # after its contents were made
    sparse = os.stat(tree / "sparse")
    assert sparse.st_size == 64 * MIB and sparse.st_blocks * 512 < MIB  # before (no holes): 64 MiB
    with open(tree / "sparse", "rb") as f:
        f.seek(32 * MIB)
        assert f.read(1) == b"x"
    assert stat.S_IMODE(os.stat(tree / "setuid").st_mode) == 0o755
    assert not os.path.lexists(tree / "fifo") and not os.path.lexists(tree / "sock")
    assert (tree / deep.relative_to(source) / "bottom").read_text() == "end"


def test_a_file_of_zeros_takes_no_disk_once_copied(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "zeros").write_bytes(bytes(8 * MIB))  # written, not sparse: 8 MiB allocated
    (source / "mixed").write_bytes(bytes(MIB) + b"data" + bytes(MIB))
    copy_tree(source, tmp_path / "tree")
    zeros = os.stat(tmp_path / "tree" / "zeros")
    assert zeros.st_size == 8 * MIB and zeros.st_blocks == 0
    mixed = tmp_path / "tree" / "mixed"
    assert mixed.read_bytes() == bytes(MIB) + b"data" + bytes(MIB)
    assert os.stat(mixed).st_blocks * 512 <= 8192
