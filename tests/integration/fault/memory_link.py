"""A real stack whose history can be cut off from the memory service, for the fault tests.

`MemoryLink` is a TCP forwarder (in a thread of the test process) that the executor dials
instead of the memory service: `cut()` closes its port and every connection through it (the
executor sees a memory service that is gone, while the gateway, which dials the memory service
itself, still reads what arrived), `restore()` listens again on the same port. `history_stack`
starts memory, scheduler, a bubblewrap executor and the gateway, with or without the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import Cluster, Service, free_port, wait_for_http


class MemoryLink:
    def __init__(self, target: str) -> None:
        self.target_host, target_port = target.rsplit(":", 1)
        self.target_port = int(target_port)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def restore(self) -> None:
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    def cut(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._connect, "127.0.0.1", self.port, reuse_address=True)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, upstream_writer}
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
        self._writers.discard(writer)


def kill9(service: Service) -> None:
    """SIGKILL to the service's process group (it was started in a session of its own)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(service.proc.pid, signal.SIGKILL)
    service.proc.wait(10)


@contextlib.contextmanager
def history_stack(link: bool = False, **env: str) -> Iterator[tuple[Cluster, MemoryLink | None]]:
    """memory, scheduler, a bubblewrap executor (through a MemoryLink if `link`) and the gateway."""
    # Under /tmp, not pytest's root-only tmp tree: sandboxes run as an unprivileged host uid.
    data_dir = Path(tempfile.mkdtemp(prefix="corral-fault-test-"))
    data_dir.chmod(0o755)
    cluster = Cluster.new(data_dir, CORRAL_MEMORY_DATABASE_URL="", **env)
    memory_link: MemoryLink | None = None
    try:
        cluster.start_memory()
        cluster.start_scheduler()
        if link:
            memory_link = MemoryLink(cluster.memory_address)
            memory_link.restore()
        start_executor(cluster, memory_link)
        service = cluster.start("gateway", "gateway")
        wait_for_http(service, cluster.gateway_url + "/openapi.json")
        yield cluster, memory_link
    finally:
        cluster.stop()
        if memory_link is not None:
            memory_link.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def start_executor(cluster: Cluster, memory_link: MemoryLink | None) -> Service:
    """The executor (again, under the same id, address and data directory)."""
    env = {"CORRAL_EXECUTOR_ID": "executor-fault"}
    if memory_link is not None:
        env["CORRAL_MEMORY_ADDRESS"] = memory_link.address
    return cluster.start_executor(**env)


def wait_until(condition: Any, what: str, timeout: float = 60.0, every: float = 0.2) -> Any:
    """Polls `condition()` until it returns something truthy (a bound on waiting, not a check on time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"gave up waiting: {what}")
