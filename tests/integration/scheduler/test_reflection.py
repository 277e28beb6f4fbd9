"""A client that knows nothing of Corral (only gRPC reflection) lists services and calls SubmitTask.

This is what grpcurl does: fetch the descriptors from the server, build messages from JSON,
and call the method by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from harness import Cluster, cluster


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("refl"), "memory", "scheduler") as c:
        yield c


def test_reflection_lists_every_service_with_health(services: Cluster) -> None:
    expected = {
        # The public API and, on the same port, the executors' internal registry.
        services.scheduler_address: {
            "corral.v1.SchedulerService",
            "corral.v1.SandboxService",
            "corral.internal.v1.ExecutorRegistryService",
        },
        services.memory_address: {"corral.v1.MemoryService"},
    }
    for address, served in expected.items():
        with services.channel(address) as channel:
            names = set(ProtoReflectionDescriptorDatabase(channel).get_services())
            assert {*served, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", *served):
                reply = health.Check(health_pb2.HealthCheckRequest(service=name))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_generic_client_submits_a_task_from_json(services: Cluster) -> None:
    with services.channel(services.scheduler_address) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName("corral.v1.SchedulerService").FindMethodByName("SubmitTask")
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        request = json_format.Parse(
            json.dumps({"spec": {"steps": [{"shell": {"command": "echo from grpcurl"}}], "stepTimeout": "5s"}}),
            request_cls(),
        )
        call = channel.unary_unary(
            "/corral.v1.SchedulerService/SubmitTask",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        reply = json_format.MessageToDict(call(request))
    assert len(reply["taskId"]) == 32
    assert reply["task"]["state"] == "TASK_STATE_SCHEDULED"
    assert reply["task"]["spec"]["steps"][0]["shell"]["command"] == "echo from grpcurl"
