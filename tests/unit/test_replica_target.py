"""A comma-separated list of scheduler replicas becomes one gRPC target over all of them."""

from __future__ import annotations

import json

import pytest

from corral.grpc_server import replica_target


def test_every_replica_is_in_the_target_and_certificates_are_checked_against_the_first() -> None:
    target, options = replica_target("127.0.0.1:7001, localhost:7002")
    assert target.startswith("ipv4:")
    assert target.split(":", 1)[1].split(",") == ["127.0.0.1:7001", "127.0.0.1:7002"]
    given = dict(options)
    assert given["grpc.ssl_target_name_override"] == "127.0.0.1"
    config = json.loads(str(given["grpc.service_config"]))
    assert config["healthCheckConfig"] == {"serviceName": ""}  # calls go to the SERVING leader


def test_an_entry_without_a_port_is_named() -> None:
    with pytest.raises(ValueError, match="'scheduler-b' is not host:port"):
        replica_target("127.0.0.1:7001,scheduler-b")
