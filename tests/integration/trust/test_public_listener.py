"""The scheduler's public listener (CORRAL_SCHEDULER_PUBLIC_ADDRESS): a tenant with only an API
key (no certificate from the deployment's CA) calls the public gRPC API over TLS it verifies
with the CA. Before, the only listener demanded a client certificate, so a key alone could not
call gRPC at all, and a caller without one got UNAVAILABLE at the handshake. There:
- health and reflection answer anyone;
- public RPCs without a key: UNAUTHENTICATED; with a tenant's key: that tenant's view only;
- every internal RPC (registration, heartbeats, sandbox access): UNAUTHENTICATED, whoever asks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import REPO, Cluster, cluster, free_port

from corral.internal.v1 import registry_pb2, registry_pb2_grpc, sandbox_access_pb2, sandbox_access_pb2_grpc
from corral.v1 import keys_pb2, keys_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, task_pb2


@pytest.fixture(scope="module")
def public(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, str]]:
    address = f"127.0.0.1:{free_port()}"
    data_dir = tmp_path_factory.mktemp("public")
    with cluster(data_dir, "memory", "scheduler", CORRAL_AUTH="keys", CORRAL_SCHEDULER_PUBLIC_ADDRESS=address) as c:
        yield c, address


def admin_key(c: Cluster) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "corral.cli", "keys", "create", "--admin", "--name", "admin", "--database", "--json"],
        cwd=REPO, env=c.env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["key"])


def key_only_channel(c: Cluster, address: str) -> grpc.Channel:
    """What a tenant has: the CA's certificate to check the server, and its key; no certificate."""
    ca = (Path(c.env["CORRAL_TLS_DIR"]) / "ca.crt").read_bytes()
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca))


def bearer(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


def test_a_key_alone_reaches_the_public_api_and_nothing_else(public: tuple[Cluster, str]) -> None:
    c, address = public
    admin = admin_key(c)
    with key_only_channel(c, address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING

        tasks = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        spec = task_pb2.TaskSpec(steps=[task_pb2.Step(shell=task_pb2.ShellAction(command="echo hi"))])
        with pytest.raises(grpc.RpcError) as no_key:
            tasks.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec), timeout=10)
        assert no_key.value.code() == grpc.StatusCode.UNAUTHENTICATED, no_key.value.details()
        assert "API key" in (no_key.value.details() or "")

        # A tenant's key: it submits and sees its own task; another tenant sees nothing of it.
        keys = keys_pb2_grpc.KeyServiceStub(channel)
        alice = keys.CreateKey(keys_pb2.CreateKeyRequest(name="alice"), metadata=bearer(admin), timeout=10).secret
        bob = keys.CreateKey(keys_pb2.CreateKeyRequest(name="bob"), metadata=bearer(admin), timeout=10).secret
        task_id = tasks.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec), metadata=bearer(alice), timeout=10).task_id
        mine = tasks.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id), metadata=bearer(alice), timeout=10)
        assert mine.task.task_id == task_id
        with pytest.raises(grpc.RpcError) as other:
            tasks.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id), metadata=bearer(bob), timeout=10)
        assert other.value.code() == grpc.StatusCode.NOT_FOUND

        # Internal RPCs answer no one here, key or not.
        registry = registry_pb2_grpc.ExecutorRegistryServiceStub(channel)
        access = sandbox_access_pb2_grpc.SandboxAccessServiceStub(channel)
        internal = [
            lambda: registry.RegisterExecutor(
                registry_pb2.RegisterExecutorRequest(executor_id="rogue", address="127.0.0.1:1", capacity=100),
                metadata=bearer(admin), timeout=10,
            ),
            lambda: registry.Heartbeat(registry_pb2.HeartbeatRequest(executor_id="executor"), timeout=10),
            lambda: registry.ListExecutors(registry_pb2.ListExecutorsRequest(), metadata=bearer(admin), timeout=10),
            lambda: access.AuthorizeSandboxAccess(
                sandbox_access_pb2.AuthorizeSandboxAccessRequest(sandbox_id="s", token="t"), timeout=10
            ),
        ]
        for call in internal:
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value.details()
            assert "client certificate" in (refused.value.details() or "")
