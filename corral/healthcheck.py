"""Exits 0 when a Corral service is healthy: for container healthchecks and scripts.

    python -m corral.healthcheck 127.0.0.1:50051          # gRPC health: SERVING?
    python -m corral.healthcheck 127.0.0.1:50051 --service corral.v1.SchedulerService
    python -m corral.healthcheck http://127.0.0.1:8000/healthz   # HTTP: a 2xx answer?
    python -m corral.healthcheck 127.0.0.1:50051 --alive  # answers at all (SERVING or not)?

`--alive` is for liveness probes of scheduler replicas: a standby answers NOT_SERVING (it must
not get traffic) but is well (it takes over when the leader goes).

Uses the standard grpc.health.v1 service every Corral server registers, so it works against
any of them (like grpc_health_probe, without another binary in the image). Over TLS, with the
certificate of `--role` (default admin) and the deployment's CA, as every Corral process finds
them (CORRAL_TLS_DIR, default <data_dir>/pki, or CORRAL_TLS_*_FILE): servers demand a client
certificate from the CA, though health answers every role.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from corral.config import Settings


def check_grpc(
    address: str, service: str, timeout: float, role: str = "admin", alive: bool = False
) -> str | None:
    """None when SERVING (with `alive`: when it answers, SERVING or NOT_SERVING), else what is wrong."""
    try:
        ca, cert, key = (path.read_bytes() for path in Settings().tls_paths(role))
    except OSError as exc:
        return f"cannot read {exc.filename}: {exc.strerror or exc}"
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    with grpc.secure_channel(address, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
    if alive and reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
        return None
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    return None


def check_http(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return str(exc)
    return None if 200 <= status < 300 else f"HTTP {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corral.healthcheck", description=__doc__.split("\n")[0])
    parser.add_argument("target", help="host:port of a gRPC server, or an http(s):// URL")
    parser.add_argument("--service", default="", help="gRPC service name to check ('' = the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    parser.add_argument("--role", default="admin", help="whose certificate to present (gRPC; default admin)")
    parser.add_argument("--alive", action="store_true", help="gRPC: NOT_SERVING passes too (a scheduler standby)")
    args = parser.parse_args(argv)
    if args.target.startswith(("http://", "https://")):
        problem = check_http(args.target, args.timeout)
    else:
        problem = check_grpc(args.target, args.service, args.timeout, args.role, args.alive)
    if problem is not None:
        print(f"unhealthy: {args.target}: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
