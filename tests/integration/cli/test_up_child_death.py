"""`corral up` when a service dies after start: it says which and why, and stops the rest."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from cli_helpers import port_is_free, process_tree, services_missing, start_corral_up, still_alive, stop


def test_a_service_dying_later_stops_everything() -> None:
    missing = services_missing()
    if missing:
        pytest.skip("services not written yet: " + ", ".join(missing))
    data_dir = Path(tempfile.mkdtemp(prefix="corral-cli-test-"))
    data_dir.chmod(0o755)
    up = start_corral_up(data_dir)
    try:
        tree = process_tree(up.process.pid)
        executor = next(
            pid for pid, _ in tree
            if b"services.executor" in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
        os.kill(executor, signal.SIGKILL)
        assert up.process.wait(60) == 1
        text = up.text()
        assert "executor exited (killed by signal 9)" in text
        assert "stopping the other services" in text
        assert [p for p in tree if still_alive(*p)] == []
        for port in up.ports:
            assert port_is_free(port), port
    finally:
        stop(up.process)
        shutil.rmtree(data_dir, ignore_errors=True)
