"""Keeps this executor registered with the scheduler: register, then heartbeat forever.

The scheduler may be down, restarting or absent (tests run the executor alone): failures are
retried quietly, and a heartbeat answered with known=false (the scheduler forgot us, e.g.
after a restart) triggers a fresh registration. A registration waits for the channel to
connect (wait_for_ready) instead of failing fast, so it is sent the moment the scheduler
answers again (the channel retries every half second or so, corral.grpc_server), not a
heartbeat interval later.

Each registration lists the long-lived sandboxes this executor holds, so the scheduler can fail
the records of sandboxes it lost (an executor restart) and name the ones it no longer wants
(deleted or expired while we were away), which are removed here. It also lists the tasks this
executor runs (or ran and holds the events of), so a restarted scheduler takes them back
(AttachTask) and names those it no longer wants, which are cancelled and let go here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

import grpc
import structlog

from corral.config import Settings
from corral.grpc_server import channel
from corral.internal.v1 import registry_pb2, registry_pb2_grpc
from services.executor.sandboxes import SandboxManager

log = structlog.get_logger()

CALL_TIMEOUT_SECONDS = 5.0
# A scheduler that is down or did not answer in time: the next registration (wait_for_ready)
# waits for it, so only a short pause keeps a failing connection from spinning.
UNREACHABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
UNREACHABLE_RETRY_SECONDS = 0.1


class SchedulerRegistration:
    def __init__(
        self,
        settings: Settings,
        executor_id: str,
        advertise_address: str,
        capacity: int,
        driver: str,
        interval: float,
        sandboxes: SandboxManager,
        held_tasks: Callable[[], Sequence[registry_pb2.HeldTask]] = list,
        drop_task: Callable[[str, str], None] = lambda task_id, reason: None,
        learn_leader: Callable[[int], None] = lambda epoch: None,
    ) -> None:
        self.settings = settings
        self.request = registry_pb2.RegisterExecutorRequest(
            executor_id=executor_id, address=advertise_address, capacity=capacity, driver=driver,
            max_sandboxes=sandboxes.max_sandboxes,
        )
        self.sandboxes = sandboxes
        self.held_tasks = held_tasks
        self.drop_task = drop_task
        self.learn_leader = learn_leader
        self.interval = interval
        self.registered = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        async with channel(self.settings.scheduler_address, self.settings, "executor") as chan:
            stub = registry_pb2_grpc.ExecutorRegistryServiceStub(chan)
            failing = False
            while True:
                interval = self.interval
                try:
                    if not self.registered:
                        request = registry_pb2.RegisterExecutorRequest()
                        request.CopyFrom(self.request)
                        request.sandbox_ids.extend(self.sandboxes.sandbox_ids)
                        request.held_tasks.extend(self.held_tasks())
                        reply = await stub.RegisterExecutor(
                            request, timeout=CALL_TIMEOUT_SECONDS, wait_for_ready=True
                        )
                        self.learn_leader(reply.leader_epoch)  # first: a deposed leader's calls are refused
                        self.registered = True
                        for sandbox_id in reply.stale_sandbox_ids:
                            await self.sandboxes.delete(sandbox_id, "the scheduler no longer has it")
                        for task_id in reply.drop_task_ids:
                            self.drop_task(task_id, "the scheduler no longer has the task assigned here")
                        if reply.heartbeat_interval_seconds > 0:
                            interval = min(interval, reply.heartbeat_interval_seconds)
                        log.info(
                            "registered with the scheduler",
                            scheduler=self.settings.scheduler_address,
                            executor_id=self.request.executor_id,
                            held_tasks=len(request.held_tasks),
                        )
                    else:
                        beat = await stub.Heartbeat(
                            registry_pb2.HeartbeatRequest(executor_id=self.request.executor_id),
                            timeout=CALL_TIMEOUT_SECONDS,
                        )
                        if not beat.known:
                            log.info("the scheduler forgot this executor; registering again")
                            self.registered = False
                            continue
                    failing = False
                except grpc.aio.AioRpcError as exc:
                    self.registered = False
                    (log.debug if failing else log.info)(
                        "scheduler unreachable; will retry",
                        scheduler=self.settings.scheduler_address,
                        code=exc.code().name,
                    )
                    failing = True
                    if exc.code() in UNREACHABLE_CODES:
                        # Register again at once: that call waits for the scheduler itself.
                        interval = min(interval, UNREACHABLE_RETRY_SECONDS)
                await asyncio.sleep(interval)
