"""The gRPC edge: errors, status, reflection/health, scheduler registration, history, the process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from harness import executor_tls_env, scheduler_channel

from corral.config import Settings
from corral.grpc_server import bind, new_server
from corral.internal.v1 import executor_pb2, executor_pb2_grpc, registry_pb2, registry_pb2_grpc
from corral.v1 import memory_pb2, memory_pb2_grpc, task_pb2

from .conftest import ExecutorClient, ExecutorFactory, free_port, grpc_code, spec

REPO = Path(__file__).resolve().parents[3]


async def test_bad_requests_get_clear_status_codes(executor_factory: ExecutorFactory) -> None:
    executor = await executor_factory(executor_capacity=1)
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        async for _ in executor.stub.RunTask(executor_pb2.RunTaskRequest(task_id="t1", spec=task_pb2.TaskSpec())):
            pass
    assert grpc_code(empty.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "a task needs at least one step" in str(empty.value.details())  # the scheduler's own check
    with pytest.raises(grpc.aio.AioRpcError) as bad_id:
        async for _ in executor.stub.RunTask(
            executor_pb2.RunTaskRequest(task_id="../evil", spec=spec([{"tool": "shell", "command": "true"}]))
        ):
            pass
    assert grpc_code(bad_id.value) == grpc.StatusCode.INVALID_ARGUMENT

    long_task = executor.stub.RunTask(
        executor_pb2.RunTaskRequest(task_id="busy", spec=spec([{"tool": "shell", "command": "echo go; sleep 30"}]))
    )
    async for response in long_task:
        if response.event.WhichOneof("event") == "output":
            break
    with pytest.raises(grpc.aio.AioRpcError) as duplicate:
        async for _ in executor.stub.RunTask(
            executor_pb2.RunTaskRequest(task_id="busy", spec=spec([{"tool": "shell", "command": "true"}]))
        ):
            pass
    assert grpc_code(duplicate.value) == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as full:
        async for _ in executor.stub.RunTask(
            executor_pb2.RunTaskRequest(task_id="other", spec=spec([{"tool": "shell", "command": "true"}]))
        ):
            pass
    assert grpc_code(full.value) == grpc.StatusCode.RESOURCE_EXHAUSTED

    status = await executor.stub.GetExecutorStatus(executor_pb2.GetExecutorStatusRequest())
    assert status.running_task_ids == ["busy"]
    assert status.capacity == 1 and status.driver == executor.driver
    assert status.executor_id == executor.executor.executor_id
    await executor.stub.CancelTask(executor_pb2.CancelTaskRequest(task_id="busy"))
    async for _ in long_task:
        pass


async def test_reflection_and_health(executor: ExecutorClient) -> None:
    health = health_pb2_grpc.HealthStub(executor.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="corral.internal.v1.ExecutorService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(executor.channel)

    async def requests() -> Any:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for response in stub.ServerReflectionInfo(requests()):
        names = {s.name for s in response.list_services_response.service}
        assert "corral.internal.v1.ExecutorService" in names
        break


class FakeScheduler(registry_pb2_grpc.ExecutorRegistryServiceServicer):
    """Records registrations; forgets the executor once, to check it registers again."""

    def __init__(self) -> None:
        self.registrations: list[registry_pb2.RegisterExecutorRequest] = []
        self.heartbeats = 0
        self.again = asyncio.Event()

    async def RegisterExecutor(self, request: Any, context: Any) -> registry_pb2.RegisterExecutorResponse:
        self.registrations.append(request)
        if len(self.registrations) >= 2:
            self.again.set()
        return registry_pb2.RegisterExecutorResponse(heartbeat_interval_seconds=0.1)

    async def Heartbeat(self, request: Any, context: Any) -> registry_pb2.HeartbeatResponse:
        self.heartbeats += 1
        return registry_pb2.HeartbeatResponse(known=self.heartbeats > 1)


class FakeMemory(memory_pb2_grpc.MemoryServiceServicer):
    def __init__(self) -> None:
        self.events: list[memory_pb2.HistoryEvent] = []
        self.finished = asyncio.Event()

    async def AppendEvents(self, request: Any, context: Any) -> memory_pb2.AppendEventsResponse:
        self.events.extend(request.events)
        if any(e.kind == memory_pb2.HISTORY_KIND_TASK_FINISHED for e in request.events):
            self.finished.set()
        return memory_pb2.AppendEventsResponse()


async def test_registers_heartbeats_and_records_history(executor_factory: ExecutorFactory, tmp_path: Path) -> None:
    scheduler, memory = FakeScheduler(), FakeMemory()
    server = new_server()  # with the real policy: the executor calls as executor "exec-a"
    registry_pb2_grpc.add_ExecutorRegistryServiceServicer_to_server(scheduler, server)
    memory_pb2_grpc.add_MemoryServiceServicer_to_server(memory, server)
    executor_tls_env(tmp_path / "pki", "exec-a")  # the test's CA (the factory's executors use it)
    port = bind(server, "127.0.0.1:0", Settings(tls_dir=tmp_path / "pki"), "scheduler")
    await server.start()
    try:
        executor = await executor_factory(
            scheduler_address=f"127.0.0.1:{port}", memory_address=f"127.0.0.1:{port}", executor_id="exec-a"
        )
        await asyncio.wait_for(scheduler.again.wait(), 30)
        first = scheduler.registrations[0]
        assert first.executor_id == "exec-a" and first.driver == executor.driver
        assert first.address == f"127.0.0.1:{executor.executor.port}" and first.capacity == 8

        task_id, _ = await executor.run_steps(
            [{"tool": "shell", "command": "echo hi"}, {"tool": "shell", "command": "exit 4"}]
        )
        await asyncio.wait_for(memory.finished.wait(), 30)
    finally:
        await server.stop(0)
    kinds = [memory_pb2.HistoryKind.Name(e.kind) for e in memory.events if e.task_id == task_id]
    assert kinds == [
        "HISTORY_KIND_TASK_STARTED",
        "HISTORY_KIND_ACTION", "HISTORY_KIND_RESULT",
        "HISTORY_KIND_ACTION", "HISTORY_KIND_RESULT",
        "HISTORY_KIND_TASK_FINISHED",
    ]
    results = [e for e in memory.events if e.kind == memory_pb2.HISTORY_KIND_RESULT]
    assert results[0].action == "echo hi" and results[0].stdout == "hi\n" and results[0].state == "completed"
    assert results[1].exit_code == 4 and results[1].state == "failed"
    assert memory.events[-1].state == "failed"


async def test_runs_as_a_process(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "CORRAL_DATA_DIR": str(tmp_path),
        "CORRAL_EXECUTOR_ADDRESS": f"127.0.0.1:{port}",
        "CORRAL_SCHEDULER_ADDRESS": f"127.0.0.1:{free_port()}",
        "CORRAL_MEMORY_ADDRESS": f"127.0.0.1:{free_port()}",
        **executor_tls_env(tmp_path / "pki", "executor"),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.executor", cwd=REPO, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with scheduler_channel(tmp_path / "pki", f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            stub = executor_pb2_grpc.ExecutorServiceStub(channel)
            events = [
                r.event
                async for r in stub.RunTask(
                    executor_pb2.RunTaskRequest(task_id="p1", spec=spec([{"tool": "shell", "command": "echo ok"}]))
                )
            ]
        assert events[-1].finished.state == task_pb2.TASK_STATE_COMPLETED
        assert (tmp_path / "tasks" / "p1" / "agent.log").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)
    assert process.returncode == 0


async def test_refuses_a_data_directory_another_live_executor_holds(tmp_path: Path) -> None:
    """Two executors on one data directory would each sweep, release and deliver what the other
    holds as leftovers: the second is refused, naming the directory and the holder; once the
    holder dies (kill -9: no cleanup) the directory is free again."""

    def executor_env(name: str) -> dict[str, str]:
        return {
            **os.environ,
            "CORRAL_DATA_DIR": str(tmp_path / "data"),
            "CORRAL_EXECUTOR_ADDRESS": f"127.0.0.1:{free_port()}",
            "CORRAL_SCHEDULER_ADDRESS": f"127.0.0.1:{free_port()}",
            "CORRAL_MEMORY_ADDRESS": f"127.0.0.1:{free_port()}",
            **executor_tls_env(tmp_path / "pki", name),
        }

    async def start(env: dict[str, str]) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.executor", cwd=REPO, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )

    async def serving(env: dict[str, str]) -> None:
        async with scheduler_channel(tmp_path / "pki", env["CORRAL_EXECUTOR_ADDRESS"]) as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)

    first_env = executor_env("first")
    first = await start(first_env)
    try:
        await serving(first_env)
        second = await start(executor_env("second"))
        _, stderr = await asyncio.wait_for(second.communicate(), 60)
        assert second.returncode == 1
        message = stderr.decode()
        assert f"the data directory {tmp_path / 'data'} is in use by another executor (pid {first.pid}" in message
        assert "give each executor its own CORRAL_DATA_DIR" in message and "Traceback" not in message
    finally:
        first.kill()
        await first.wait()

    third_env = executor_env("third")
    third = await start(third_env)
    try:
        await serving(third_env)  # it took the directory: it serves
    finally:
        third.kill()
        await third.wait()
