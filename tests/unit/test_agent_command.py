"""The agent's command line is written twice: the bubblewrap driver's (COMPILED_AGENT_COMMAND,
AGENT_COMMAND without the binary) and the docker image's CMD. They must stay the same, and each
must start the agent."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from corral import agent_protocol as protocol

ROOT = Path(__file__).resolve().parents[2]


def test_the_docker_images_cmd_is_the_agent_command() -> None:
    lines = (ROOT / "sandbox" / "Dockerfile").read_text().splitlines()
    (cmd,) = [line for line in lines if line.startswith("CMD ")]
    assert json.loads(cmd.removeprefix("CMD ")) == protocol.COMPILED_AGENT_COMMAND


def test_the_agent_command_starts_the_agent_of_the_directory_it_names(tmp_path: Path) -> None:
    command = [*protocol.AGENT_COMMAND[:-1], str(ROOT / "sandbox" / "runtime" / "agent.py")]
    done = subprocess.run(
        command, cwd=tmp_path, input=b"", capture_output=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "CORRAL_AGENT_SCRIPT_DIR": str(tmp_path / "scripts")},
    )
    assert done.returncode == 0, done.stderr
    ready = json.loads(done.stdout.splitlines()[0])
    assert ready["type"] == "ready" and ready["protocol"] == protocol.PROTOCOL_VERSION
