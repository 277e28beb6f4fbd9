"""corral.internal.v1.SandboxAccessService on a real scheduler with a real executor: tokens are
checked by the scheduler (their hashes never leave it), the run directory is told only to a
valid token, and the public Sandbox message carries neither."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from harness import Cluster, cluster
from test_sandboxes_follow_executors import alive_executors, wait_until

from corral.internal.v1 import sandbox_access_pb2, sandbox_access_pb2_grpc
from corral.v1 import sandbox_pb2, sandbox_pb2_grpc, task_pb2

HIDDEN = {"host_run_dir", "host_tasks_dir", "token_sha256", "view_token_sha256"}


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, grpc.Channel]]:
    data_dir = tmp_path_factory.mktemp("access")
    data_dir.chmod(0o755)
    with cluster(data_dir, "scheduler", "executor") as system:
        with system.channel(system.scheduler_address, "gateway") as chan:  # its only caller
            wait_until(lambda: len(alive_executors(chan)) == 1, "the executor registered")
            yield system, chan


def test_public_messages_carry_no_hashes_or_host_paths() -> None:
    assert not HIDDEN & set(sandbox_pb2.Sandbox.DESCRIPTOR.fields_by_name)
    assert "host_log_path" not in task_pb2.Task.DESCRIPTOR.fields_by_name
    assert "host_task_dir" not in task_pb2.TaskStarted.DESCRIPTOR.fields_by_name
    assert "StartJupyter" not in sandbox_pb2.DESCRIPTOR.services_by_name["SandboxService"].methods_by_name


def test_tokens_are_checked_by_the_scheduler(channel: tuple[Cluster, grpc.Channel]) -> None:
    system, chan = channel
    names = set(ProtoReflectionDescriptorDatabase(chan).get_services())
    assert "corral.internal.v1.SandboxAccessService" in names

    sandboxes = sandbox_pb2_grpc.SandboxServiceStub(chan)
    created = sandboxes.CreateSandbox(sandbox_pb2.CreateSandboxRequest(spec=sandbox_pb2.SandboxSpec()))
    sandbox_id = created.sandbox.sandbox_id
    # Nothing hidden travels in the public record, not even as unknown fields.
    got = sandboxes.GetSandbox(sandbox_pb2.GetSandboxRequest(sandbox_id=sandbox_id)).sandbox
    wire = got.SerializeToString()
    for token in (created.token, created.view_token):
        assert token.encode() not in wire and hashlib.sha256(token.encode()).hexdigest().encode() not in wire
    assert str(system.data_dir).encode() not in wire

    access = sandbox_access_pb2_grpc.SandboxAccessServiceStub(chan)

    def authorize(token: str) -> sandbox_access_pb2.AuthorizeSandboxAccessResponse:
        request = sandbox_access_pb2.AuthorizeSandboxAccessRequest(sandbox_id=sandbox_id, token=token)
        reply: sandbox_access_pb2.AuthorizeSandboxAccessResponse = access.AuthorizeSandboxAccess(request)
        return reply

    try:
        full = authorize(created.token)
        assert full.access == sandbox_access_pb2.SANDBOX_ACCESS_FULL
        # Where its executor is (its relay carries the desktop), not where its files are.
        assert full.executor_address == system.executor_address
        assert full.sandbox.sandbox_id == sandbox_id
        assert full.sandbox.state == sandbox_pb2.SANDBOX_STATE_ACTIVE

        view = authorize(created.view_token)
        assert view.access == sandbox_access_pb2.SANDBOX_ACCESS_VIEW
        assert view.executor_address == full.executor_address

        for token in ("", "wrong", created.token + "x", created.token[:-1]):
            refused = authorize(token)
            assert refused.access == sandbox_access_pb2.SANDBOX_ACCESS_NONE, token
            assert refused.executor_address == "", token

        with pytest.raises(grpc.RpcError) as unknown:
            access.AuthorizeSandboxAccess(
                sandbox_access_pb2.AuthorizeSandboxAccessRequest(sandbox_id="nope", token=created.token)
            )
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

        # Starting Jupyter (a process in the sandbox) needs the full token too.
        for token in ("", created.view_token, "wrong"):
            with pytest.raises(grpc.RpcError) as refused_start:
                access.OpenJupyter(
                    sandbox_access_pb2.OpenJupyterRequest(sandbox_id=sandbox_id, base_url="/x/", token=token)
                )
            assert refused_start.value.code() == grpc.StatusCode.PERMISSION_DENIED, token
    finally:
        sandboxes.DeleteSandbox(sandbox_pb2.DeleteSandboxRequest(sandbox_id=sandbox_id))
    with pytest.raises(grpc.RpcError) as ended:
        access.OpenJupyter(
            sandbox_access_pb2.OpenJupyterRequest(sandbox_id=sandbox_id, base_url="/x/", token=created.token)
        )
    assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_sandbox_env_values_are_write_only(channel: tuple[Cluster, grpc.Channel]) -> None:
    """A sandbox's env reaches the executor, but no public reply returns the values (before:
    GetSandbox/ListSandboxes gave them to every caller)."""
    _, chan = channel
    sandboxes = sandbox_pb2_grpc.SandboxServiceStub(chan)
    spec = sandbox_pb2.SandboxSpec(env={"API_KEY": "sk-very-secret"})
    created = sandboxes.CreateSandbox(sandbox_pb2.CreateSandboxRequest(spec=spec))
    sandbox_id = created.sandbox.sandbox_id
    try:
        got = sandboxes.GetSandbox(sandbox_pb2.GetSandboxRequest(sandbox_id=sandbox_id)).sandbox
        listed = [s for s in sandboxes.ListSandboxes(sandbox_pb2.ListSandboxesRequest()).sandboxes
                  if s.sandbox_id == sandbox_id]
        for shown in (created.sandbox, got, *listed):
            assert dict(shown.spec.env) == {"API_KEY": ""}
        assert len(listed) == 1
    finally:
        deleted = sandboxes.DeleteSandbox(sandbox_pb2.DeleteSandboxRequest(sandbox_id=sandbox_id)).sandbox
        assert dict(deleted.spec.env) == {"API_KEY": ""}
