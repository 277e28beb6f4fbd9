"""`corral run` starts on the blocking SDK alone: what it imports is most of what it costs
(bench/cli_startup.py), so the heavy libraries must stay off its path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Each costs `corral run` more to import than the rest of it does (or is the server's); http.client
# brings the email package (its header parser); ssl (and socket.py, which it wraps) are for https
# gateways only; shutil is what argparse asks the terminal's width.
HEAVY = (
    "httpx", "grpc", "google.protobuf", "pydantic", "asyncio", "dataclasses", "corral.sdk.results", "yaml",
    "http.client", "email", "ssl", "threading", "socket", "selectors", "shutil",
)

# What `corral run -q 'echo x'` loads before its first request: the command line parsed,
# its module, the blocking client and a task's first call built.
RUN_PATH = """
import json, sys
from corral import cli
args = cli.build_parser("run").parse_args(["--url", "http://127.0.0.1:9", "run", "-q", "echo x"])
cli.BY_NAME[args.command].function("run")
from corral.cli_client import make_client
from corral.cli_run import RunPrinter, build_task
from corral.sdk import calls
from corral.sdk.sync import Task
document = build_task(args)
RunPrinter(document["steps"], args.quiet, args.events)
calls.submit_task(document), calls.task_events("t-1")
make_client(args).close()
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.timeout(60)
def test_corral_run_imports_no_heavy_library() -> None:
    done = subprocess.run(
        [sys.executable, "-c", RUN_PATH], cwd=REPO, capture_output=True, text=True, timeout=50, check=True
    )
    loaded = set(json.loads(done.stdout))
    assert "corral.sdk.sync" in loaded  # the path was really taken
    heavy = sorted(name for name in HEAVY if name in loaded)
    assert heavy == [], f"`corral run` imports {heavy}"
