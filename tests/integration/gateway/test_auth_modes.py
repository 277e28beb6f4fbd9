"""The two modes: keyless on loopback (the embedded default, where the seed's curl works
verbatim, see test_gateway_end_to_end.py), keys anywhere else. A gateway or scheduler told to
listen beyond loopback without a decision on auth refuses to start; CORRAL_AUTH=off starts it
with a loud warning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from harness import REPO, Cluster, free_port

START_TIMEOUT_SECONDS = 60


def run_until_exit(cluster: Cluster, module: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module], cwd=REPO, env={**cluster.env, **env},
        capture_output=True, text=True, timeout=START_TIMEOUT_SECONDS,
    )


@pytest.mark.parametrize("auth", [None, "auto"])
def test_a_gateway_beyond_loopback_without_auth_refuses_to_start(tmp_path: Path, auth: str | None) -> None:
    cluster = Cluster.new(tmp_path, CORRAL_GATEWAY_HOST="0.0.0.0")
    cluster.env.pop("CORRAL_AUTH", None)
    done = run_until_exit(cluster, "gateway", **({"CORRAL_AUTH": auth} if auth else {}))
    assert done.returncode != 0
    assert "gateway: refusing to listen on 0.0.0.0 without API keys" in done.stderr
    assert "CORRAL_AUTH=keys" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_scheduler_beyond_loopback_without_auth_refuses_to_start(tmp_path: Path) -> None:
    cluster = Cluster.new(tmp_path, CORRAL_SCHEDULER_ADDRESS=f"0.0.0.0:{free_port()}")
    cluster.env.pop("CORRAL_AUTH", None)
    done = run_until_exit(cluster, "services.scheduler")
    assert done.returncode != 0
    assert "scheduler: refusing to listen on 0.0.0.0 without API keys" in done.stderr


def test_auth_off_beyond_loopback_starts_with_a_loud_warning(tmp_path: Path) -> None:
    cluster = Cluster.new(tmp_path, CORRAL_GATEWAY_HOST="0.0.0.0", CORRAL_AUTH="off")
    service = cluster.start("gateway", "gateway")
    try:
        from harness import wait_for_http

        wait_for_http(service, f"http://127.0.0.1:{cluster.env['CORRAL_GATEWAY_PORT']}/openapi.json")
        assert "WARNING: gateway listens on 0.0.0.0 with CORRAL_AUTH=off" in service.log()
    finally:
        cluster.stop()
