"""Fixtures of the gateway tests; the helpers live in gateway_stack.py."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_stack import make_stack
from harness import Cluster


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """memory + scheduler + gateway, no executor: tasks stay scheduled until cancelled."""
    yield from make_stack(tmp_path_factory.mktemp("gateway"), "memory", "scheduler")


@pytest.fixture(scope="module")
def full_stack() -> Iterator[Cluster]:
    """Every service, with a bubblewrap executor: tasks run to the end."""
    # Under /tmp, not pytest's root-only tmp tree: sandboxes run as an unprivileged host uid.
    data_dir = Path(tempfile.mkdtemp(prefix="corral-gateway-test-"))
    data_dir.chmod(0o755)
    try:
        yield from make_stack(data_dir, "memory", "scheduler", "executor")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def api(stack: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        yield client


@pytest.fixture
def full_api(full_stack: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=full_stack.gateway_url, timeout=60) as client:
        yield client
