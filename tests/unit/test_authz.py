"""corral.authz's policy table and identities (the processes that enforce them:
tests/integration/trust)."""

from __future__ import annotations

import grpc
import pytest

from corral.authz import OPEN, POLICY, Identity, Rule, parse_spiffe_id, refusal, rule_for, spiffe_id
from corral.internal.v1 import executor_pb2, registry_pb2, sandbox_access_pb2, sandbox_relay_pb2
from corral.v1 import memory_pb2, sandbox_pb2, scheduler_pb2

NETWORK_SERVICES = [
    executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"],
    registry_pb2.DESCRIPTOR.services_by_name["ExecutorRegistryService"],
    sandbox_access_pb2.DESCRIPTOR.services_by_name["SandboxAccessService"],
    sandbox_relay_pb2.DESCRIPTOR.services_by_name["SandboxRelayService"],
    scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"],
    sandbox_pb2.DESCRIPTOR.services_by_name["SandboxService"],
    memory_pb2.DESCRIPTOR.services_by_name["MemoryService"],
]


def all_methods() -> list[str]:
    return [f"/{service.full_name}/{method.name}" for service in NETWORK_SERVICES for method in service.methods]


@pytest.mark.parametrize("method", all_methods())
def test_every_rpc_has_a_rule_and_none_is_open(method: str) -> None:
    found = rule_for(method)
    assert isinstance(found, Rule) and found.roles, method


def test_only_health_and_reflection_are_open() -> None:
    assert sorted(k for k, v in POLICY.items() if v == OPEN) == [
        "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection",
    ]
    assert refusal("/grpc.health.v1.Health/Check", None, None) is None


def test_an_unknown_method_is_refused() -> None:
    assert refusal("/corral.v1.NewService/Do", Identity("admin", "admin"), None) == (
        grpc.StatusCode.PERMISSION_DENIED, "/corral.v1.NewService/Do is not open to any caller (no policy for it)",
    )


def test_refusals_name_the_role_needed() -> None:
    run = "/corral.internal.v1.ExecutorService/RunTask"
    assert refusal(run, Identity("scheduler", "scheduler"), None) is None
    code, message = refusal(run, None, None) or (None, "")
    assert code == grpc.StatusCode.UNAUTHENTICATED and "(role scheduler)" in message
    assert refusal(run, Identity("gateway", "gateway"), None) == (
        grpc.StatusCode.PERMISSION_DENIED, f"{run} is for role scheduler; the caller is gateway 'gateway'",
    )


def test_registration_is_bound_to_the_executor_id() -> None:
    register = "/corral.internal.v1.ExecutorRegistryService/RegisterExecutor"
    own = registry_pb2.RegisterExecutorRequest(executor_id="e1", address="h:1", capacity=1)
    other = registry_pb2.RegisterExecutorRequest(executor_id="e2", address="h:1", capacity=1)
    assert refusal(register, Identity("executor", "e1"), own) is None
    assert refusal(register, Identity("executor", "e1"), other) == (
        grpc.StatusCode.PERMISSION_DENIED, f"{register}: executor 'e1' may act only as itself, not as executor_id 'e2'",
    )
    code, _ = refusal(register, Identity("executor", "e1"), None) or (None, "")  # no request to check
    assert code == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("uri", "parsed"),
    [
        (spiffe_id("executor", "executor-1"), ("executor", "executor-1")),
        ("spiffe://corral/admin/admin", ("admin", "admin")),
        ("spiffe://corral/root/x", None),  # not a role
        ("spiffe://corral/executor/a/b", None),
        ("spiffe://corral/executor/", None),
        ("spiffe://other/executor/e1", None),
        ("https://corral/executor/e1", None),
    ],
)
def test_spiffe_ids(uri: str, parsed: tuple[str, str] | None) -> None:
    assert parse_spiffe_id(uri) == parsed
