"""fs_images: sandbox filesystems cloned from one template are separate filesystems of the
asked shape, mounted nosuid/nodev/noatime, whose loop device goes with the mount; by system
calls and by mount(8) alike (the fallback where LOOP_CONFIGURE is missing)."""

from __future__ import annotations

import ctypes
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.executor import fs_images

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        os.geteuid() != 0 or not os.path.exists("/dev/loop-control") or shutil.which("mkfs.ext4") is None,
        reason="needs root, loop devices and mkfs.ext4",
    ),
]

SIZE_MIB, INODES = 64, 1000
MNT_DETACH = 2


def loop_device_of(mount_point: Path) -> str:
    dev = os.stat(mount_point).st_dev
    return f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/loop/backing_file"


def options_of(mount_point: Path) -> set[str]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(mount_point):
            return set(fields[5].split(","))
    raise AssertionError(f"{mount_point} is not mounted")


@pytest.fixture(params=["direct", "mount(8)"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(fs_images, "_direct", None if request.param == "direct" else False)
    yield request.param


def test_clones_of_a_template_are_separate_filesystems_and_free_their_loop_devices(tmp_path: Path, way: str) -> None:
    disks = tmp_path / "disks"
    disks.mkdir(mode=0o700)
    maker = fs_images.ImageMaker(disks)
    points = []
    for name in ("a", "b"):
        image, point = disks / f"{name}.img", tmp_path / name
        maker.make(image, SIZE_MIB, "1.0000", INODES)
        assert os.stat(image).st_blocks * 512 < 4 * 1024 * 1024  # sparse, like the template
        point.mkdir()
        fs_images.mount_loop(image, point)
        points.append(point)
    if way == "direct":
        assert fs_images._direct is True  # this kernel binds loop devices by LOOP_CONFIGURE
    assert len(list(disks.glob("template-*.img"))) == 1  # one mkfs for both

    a, b = points
    assert os.stat(a).st_dev != os.stat(b).st_dev
    (a / "only-in-a").write_text("a")
    assert not (b / "only-in-a").exists()
    for point in points:
        st = os.statvfs(point)
        assert SIZE_MIB * 0.9 < st.f_blocks * st.f_frsize / 2**20 <= SIZE_MIB
        assert INODES <= st.f_files < INODES + 64
        assert {"nosuid", "nodev", "noatime"} <= options_of(point)

    backing = loop_device_of(a)
    assert Path(backing).read_text().strip() == str(disks / "a.img")
    libc = ctypes.CDLL(None, use_errno=True)
    for point in points:
        assert libc.umount2(os.fsencode(point), MNT_DETACH) == 0
    # Autoclear: the device is unbound once the filesystem's last reference is gone.
    for _ in range(500):
        if not Path(backing).exists():
            break
        time.sleep(0.01)
    assert not Path(backing).exists()
