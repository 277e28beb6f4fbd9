"""A real memory service process on a free port, with its SQLite file in a temp dir."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import free_port

from corral.grpc_server import insecure_channel
from corral.v1 import memory_pb2_grpc

REPO = Path(__file__).resolve().parents[3]


def log_text(log: Path) -> str:
    return log.read_text(errors="replace")


async def wait_serving(address: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Polls the standard health service until SERVING (or the process dies)."""
    async with insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(300):
            if process.poll() is not None:
                raise RuntimeError(f"memory exited early:\n{log_text(log)}")
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"memory never became healthy:\n{log_text(log)}")


@pytest.fixture
def memory_address(tmp_path: Path) -> Iterator[str]:
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "memory.log"
    env = {
        **os.environ,
        "CORRAL_MEMORY_ADDRESS": address,
        "CORRAL_DATA_DIR": str(tmp_path / "data"),
        "CORRAL_MEMORY_DATABASE_URL": "",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.memory"], cwd=REPO, env=env, stdout=out, stderr=out
        )
    try:
        asyncio.run(wait_serving(address, process, log))
        yield address
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
async def memory(memory_address: str) -> AsyncIterator[memory_pb2_grpc.MemoryServiceStub]:
    async with insecure_channel(memory_address) as channel:
        yield memory_pb2_grpc.MemoryServiceStub(channel)
