"""The docker driver's bind sources when the executor sees its directories elsewhere than the
Docker host does (CORRAL_DOCKER_TASKS_HOST_DIR): only tasks_dir can be translated, so a
long-lived sandbox or a desktop (run directory) is refused with a reason, not mounted wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import docker_unavailable

from corral.config import Settings
from services.executor.drivers.base import SandboxConfig, SandboxError, SandboxLimits
from services.executor.drivers.docker import DockerDriver

pytestmark = pytest.mark.docker

LIMITS = SandboxLimits(memory_mb=256, max_processes=64, max_file_size_mb=16, max_output_bytes=1 << 16, disk_mb=1024)


@pytest.fixture
def driver(tmp_path: Path) -> DockerDriver:
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    settings = Settings(data_dir=tmp_path / "data", docker_tasks_host_dir=Path("/srv/corral/tasks"))
    return DockerDriver(settings)


def test_task_directories_are_translated(driver: DockerDriver) -> None:
    inside = driver.settings.tasks_dir / "t1"
    assert driver.host_path(inside) == "/srv/corral/tasks/t1"


async def test_untranslatable_sources_are_refused_with_a_reason(driver: DockerDriver) -> None:
    data_dir = driver.settings.data_dir
    config = SandboxConfig(
        task_id="sb1",
        host_task_dir=data_dir / "sandboxes" / "sb1" / "tasks",
        limits=LIMITS,
        desktop=True,
        host_run_dir=data_dir / "run" / "sb1",
        shared_tasks=True,
    )
    with pytest.raises(SandboxError, match=r"outside tasks_dir.*same path on the Docker host"):
        await driver.create(config)
