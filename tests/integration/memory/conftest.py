"""A real memory service process on a free port, with its SQLite file in a temp dir."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from harness import Cluster, MemoryAsItsCallers, cluster


@pytest.fixture
def memory_cluster(tmp_path: Path) -> Iterator[Cluster]:
    # SQLite in the data directory, whatever the environment says.
    with cluster(tmp_path / "data", "memory", CORRAL_MEMORY_DATABASE_URL="") as c:
        yield c


@pytest.fixture
def memory_address(memory_cluster: Cluster) -> str:
    return memory_cluster.memory_address


@pytest.fixture
async def memory(memory_cluster: Cluster) -> AsyncIterator[MemoryAsItsCallers]:
    clients = MemoryAsItsCallers(memory_cluster)
    yield clients
    await clients.close()
