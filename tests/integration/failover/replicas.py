"""Scheduler replicas as real processes beside a FaultStack's memory and executors: every
service is given every replica's address (CORRAL_SCHEDULER_ADDRESS, comma-separated), each
replica listens on its own (CORRAL_SCHEDULER_LISTEN_ADDRESS). Used by the failover tests and
bench/failover.py."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import grpc
from fault_stack import FaultStack
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import free_port

from corral.grpc_server import CHANNEL_OPTIONS, replica_target
from corral.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2

LEASE_SECONDS = "2"


class ReplicaStack(FaultStack):
    def __init__(self, data_dir: Path, database_url: str, replicas: int = 2, **kwargs: object) -> None:
        self.replica_addresses = {f"scheduler-{i}": f"127.0.0.1:{free_port()}" for i in range(1, replicas + 1)}
        self._log_offsets: dict[str, int] = {}
        super().__init__(
            data_dir,
            CORRAL_SCHEDULER_ADDRESS=",".join(self.replica_addresses.values()),
            CORRAL_SCHEDULER_DATABASE_URL=database_url,
            CORRAL_SCHEDULER_LEASE_SECONDS=LEASE_SECONDS,
            **kwargs,  # type: ignore[arg-type]
        )

    def start_all(self) -> None:
        self.start("memory")
        first, *others = self.replica_addresses
        self.start(first)
        self.wait_leader(30)
        for name in others:
            self.start(name)
            self.wait_in_log(name, "standing by", 30)
        for name in self.executor_names:
            self.start(name)
        self.wait_for_executors(len(self.executor_names))

    def start(self, name: str) -> None:
        if name in self.replica_addresses:
            log = self.cluster.data_dir / f"{name}.log"  # appended to by each start
            self._log_offsets[name] = log.stat().st_size if log.exists() else 0
            self.cluster.start(
                name, "services.scheduler", CORRAL_SCHEDULER_LISTEN_ADDRESS=self.replica_addresses[name]
            )
        else:
            super().start(name)

    def channel(self) -> grpc.Channel:
        """A client given every replica's address (it finds the leader itself)."""
        target, options = replica_target(self.cluster.scheduler_address)
        return grpc.secure_channel(target, self.cluster.credentials(), options=CHANNEL_OPTIONS + options)

    def submit(self, specs: list[task_pb2.TaskSpec]) -> list[str]:
        """All at once (a load in flight), through every replica's address."""
        with self.channel() as chan:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(chan)
            calls = [stub.SubmitTask.future(scheduler_pb2.SubmitTaskRequest(spec=s), timeout=60) for s in specs]
            return [call.result().task_id for call in calls]

    def serving(self, name: str) -> bool:
        with self.cluster.channel(self.replica_addresses[name]) as chan:
            with contextlib.suppress(grpc.RpcError):
                reply = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=1)
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        return False

    def leader(self) -> str | None:
        running = [n for n in self.replica_addresses if n in self.cluster.services
                   and self.cluster.services[n].proc.poll() is None]
        return next((n for n in running if self.serving(n)), None)

    def wait_leader(self, limit: float, besides: str = "") -> str:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            for name in self.replica_addresses:
                if name != besides and name in self.cluster.services and self.serving(name):
                    return name
            time.sleep(0.05)
        raise TimeoutError(f"no scheduler replica led within {limit}s")

    def wait_in_log(self, name: str, text: str, limit: float) -> None:
        """Until the replica's latest start has logged `text`."""
        deadline = time.monotonic() + limit
        while text not in self.log(name)[self._log_offsets.get(name, 0):]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} never logged {text!r}:\n{self.log(name)[-3000:]}")
            time.sleep(0.05)
