"""The scheduler's view of executors: who they are, how to reach them, how busy they are."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc

from corral.config import Settings
from corral.grpc_server import channel as dial
from corral.internal.v1 import executor_pb2_grpc, registry_pb2

# How long calls still on a replaced channel may go on before it is closed.
RETIRED_CHANNEL_GRACE_SECONDS = 30.0


@dataclass
class ExecutorRecord:
    executor_id: str
    address: str
    capacity: int
    driver: str
    channel: grpc.aio.Channel
    stub: executor_pb2_grpc.ExecutorServiceAsyncStub
    last_seen: float = field(default_factory=time.monotonic)
    alive: bool = True
    running: set[str] = field(default_factory=set)
    # Long-lived sandboxes it holds at most (its registration; 0: as many as its capacity).
    max_sandboxes: int = 0

    @property
    def sandbox_room(self) -> int:
        return self.max_sandboxes or self.capacity

    @property
    def free(self) -> int:
        return self.capacity - len(self.running) if self.alive else 0

    def info(self) -> registry_pb2.ExecutorInfo:
        return registry_pb2.ExecutorInfo(
            executor_id=self.executor_id,
            address=self.address,
            capacity=self.capacity,
            running=len(self.running),
            driver=self.driver,
            alive=self.alive,
            max_sandboxes=self.sandbox_room,
        )


class ExecutorRegistry:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings  # the scheduler's certificate, for dialing executors
        self._executors: dict[str, ExecutorRecord] = {}
        self._retiring: dict[asyncio.Task[None], grpc.aio.Channel] = {}  # replaced channels closing

    def register(self, executor_id: str, address: str, capacity: int, driver: str) -> ExecutorRecord:
        existing = self._executors.get(executor_id)
        if existing is not None and existing.address == address and not _needs_new_channel(existing):
            existing.capacity, existing.driver = capacity, driver
            existing.last_seen, existing.alive = time.monotonic(), True
            return existing
        channel = dial(address, self._settings, "scheduler")
        # Connect now, not on the first RunTask: the executor that registers is serving.
        channel.get_state(try_to_connect=True)
        record = ExecutorRecord(
            executor_id=executor_id,
            address=address,
            capacity=capacity,
            driver=driver,
            channel=channel,
            stub=executor_pb2_grpc.ExecutorServiceStub(channel),  # an async stub on an aio channel
        )
        if existing is not None:  # a new address, or a returning executor: keep its running set
            record.running = existing.running
            self._retire(existing.channel)
        self._executors[executor_id] = record
        return record

    def _retire(self, channel: grpc.aio.Channel) -> None:
        """Closes a replaced channel once the calls still on it (if any) had time to end."""
        task = asyncio.get_running_loop().create_task(channel.close(RETIRED_CHANNEL_GRACE_SECONDS))
        self._retiring[task] = channel
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    def heartbeat(self, executor_id: str) -> bool:
        record = self._executors.get(executor_id)
        if record is None or not record.alive:
            # Unknown, or declared lost (its work was failed): it must register again, which
            # reconciles its sandboxes.
            return False
        record.last_seen = time.monotonic()
        return True

    def get(self, executor_id: str) -> ExecutorRecord | None:
        return self._executors.get(executor_id)

    def all(self) -> list[ExecutorRecord]:
        return list(self._executors.values())

    def pick(self) -> ExecutorRecord | None:
        """The live executor with the most free slots, or None when all are full."""
        candidates = [e for e in self._executors.values() if e.free > 0]
        return max(candidates, key=lambda e: e.free, default=None)

    def silent_since(self, timeout: float) -> list[ExecutorRecord]:
        now = time.monotonic()
        return [e for e in self._executors.values() if e.alive and now - e.last_seen > timeout]

    async def close(self) -> None:
        for record in self._executors.values():
            await record.channel.close(None)
        for task, channel in list(self._retiring.items()):  # stopping: no more grace
            task.cancel()
            await channel.close(None)


def _needs_new_channel(record: ExecutorRecord) -> bool:
    """Whether a returning executor needs a fresh channel: one declared lost, or whose channel
    failed to connect, would otherwise wait out that channel's reconnect backoff, and every
    RunTask sent meanwhile would fail at once (UNAVAILABLE) and requeue its task. Nothing
    live runs on such a channel: a lost executor's tasks were ended, and a channel in
    TRANSIENT_FAILURE holds no open stream."""
    if not record.alive:
        return True
    return record.channel.get_state() == grpc.ChannelConnectivity.TRANSIENT_FAILURE
