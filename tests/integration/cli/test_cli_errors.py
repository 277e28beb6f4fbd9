"""What the CLI says when things go wrong: bad task files, no gateway, ports taken."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import corral_command, free_port


def run(
    *args: str, stdin: str | None = None, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        corral_command(*args), input=stdin, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_malformed_yaml_and_empty_run(tmp_path: Path) -> None:
    result = run("run", "-f", "-", stdin="steps: [unclosed")
    assert result.returncode == 2
    assert "not valid JSON or YAML" in result.stderr
    empty = run("run")
    assert empty.returncode == 2
    assert "nothing to run" in empty.stderr


def test_unreachable_gateway(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for where in (["--url", url], []):  # the flag, or CORRAL_URL
        result = run("run", "echo hi", *where, env={"CORRAL_URL": url})
        assert result.returncode == 2
        assert result.stderr.startswith(f"corral run: cannot reach Corral at {url}: "), result.stderr
        assert "--url or CORRAL_URL" in result.stderr and result.stderr.count("\n") == 1


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.mark.parametrize("service", ["scheduler", "memory", "executor", "gateway"])
def test_up_with_a_port_taken_names_the_service(service: str, taken_port: int, tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("scheduler", "memory", "executor", "gateway")}
    ports[service] = taken_port
    result = run(
        "up", "--data-dir", str(tmp_path),
        "--scheduler-address", f"127.0.0.1:{ports['scheduler']}",
        "--memory-address", f"127.0.0.1:{ports['memory']}",
        "--executor-address", f"127.0.0.1:{ports['executor']}",
        "--gateway-port", str(ports["gateway"]),
    )
    assert result.returncode == 1
    assert f"{service} cannot listen on 127.0.0.1:{taken_port}: address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_with_an_unusable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    ports = [free_port() for _ in range(4)]
    result = run(
        "up", "--data-dir", str(blocker / "data"),
        "--scheduler-address", f"127.0.0.1:{ports[0]}", "--memory-address", f"127.0.0.1:{ports[1]}",
        "--executor-address", f"127.0.0.1:{ports[2]}", "--gateway-port", str(ports[3]),
    )
    assert result.returncode == 1
    assert "cannot use data directory" in result.stderr


def test_up_beyond_loopback_without_a_decision_on_auth_starts_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        corral_command("up", "--data-dir", str(tmp_path), "--gateway-host", "0.0.0.0",
                       "--gateway-port", str(free_port())),
        capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "CORRAL_AUTH"},
    )
    assert result.returncode == 1
    assert "gateway would listen on 0.0.0.0 without API keys: set CORRAL_AUTH=keys" in result.stderr
    assert "nothing was started" in result.stderr
    assert "Traceback" not in result.stderr


def test_keys_commands_without_an_admin_key_are_a_clear_message(tmp_path: Path) -> None:
    result = run("keys", "ls", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert result.stderr.startswith("corral keys: ") and result.stderr.count("\n") == 1, result.stderr
    made = subprocess.run(
        corral_command("keys", "create", "--name", "", "--database"), capture_output=True, text=True, timeout=60,
        env={**os.environ, "CORRAL_DATA_DIR": str(tmp_path)},
    )
    assert made.returncode == 2
    assert "corral keys: INVALID_ARGUMENT: name is required" in made.stderr
