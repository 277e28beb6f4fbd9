"""The process supervisor behind `corral up`, with small real programs standing in for services."""

from __future__ import annotations

import asyncio
import io
import sys
import textwrap
from pathlib import Path

import pytest
from cli_helpers import free_port, process_tree, still_alive

from corral.cli_up import http_ready
from corral.supervisor import ServiceSpec, StartupError, Supervisor


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def tcp_ready(port: int):  # type: ignore[no-untyped-def]
    async def probe() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    return probe


def listener(port: int, extra: str = "") -> list[str]:
    """A stand-in service: prints, optionally starts something, then listens on `port`."""
    return python(
        f"""
        import socket, subprocess, sys, time
        print("hello from a service", flush=True)
        {extra}
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", {port})); s.listen()
        while True:
            time.sleep(1)
        """
    )


async def test_a_crashing_service_is_reported_with_its_output(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs", echo=None, start_timeout=30)
    crash = python("import sys; print('cannot open database: disk on fire', file=sys.stderr); sys.exit(3)")
    try:
        with pytest.raises(StartupError) as error:
            await supervisor.start_stage([ServiceSpec("memory", crash, tcp_ready(free_port()))])
    finally:
        await supervisor.stop_all()
    message = str(error.value)
    assert message.startswith("memory failed to start: memory exited (exit code 3)")
    assert "disk on fire" in message
    assert "disk on fire" in (tmp_path / "logs" / "memory.log").read_text()


async def test_stage_waits_for_readiness_and_prefixes_output(tmp_path: Path) -> None:
    echo = io.StringIO()
    port = free_port()
    supervisor = Supervisor(tmp_path / "logs", echo=echo, start_timeout=30)
    try:
        await supervisor.start_stage([ServiceSpec("scheduler", listener(port), tcp_ready(port))])
        assert await tcp_ready(port)()
    finally:
        await supervisor.stop_all()
    assert "scheduler | hello from a service" in echo.getvalue()
    assert not await tcp_ready(port)()


async def test_stop_leaves_nothing_behind(tmp_path: Path) -> None:
    # The service starts a grandchild in its own session, out of the service's process group.
    port = free_port()
    spawn = 'subprocess.Popen(["sleep", "1000"], start_new_session=True)'
    supervisor = Supervisor(tmp_path / "logs", echo=None, start_timeout=30, stop_grace=5)
    await supervisor.start_stage([ServiceSpec("executor", listener(port, spawn), tcp_ready(port))])
    leader = supervisor.services[0].process.pid
    tree = process_tree(leader)
    assert len(tree) == 1  # the sleep
    await supervisor.stop_all()
    assert not still_alive(*tree[0])


async def test_a_service_that_never_gets_ready_times_out(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs", echo=None, start_timeout=1)
    sleeper = python("import time; print('still booting', flush=True); time.sleep(600)")
    try:
        with pytest.raises(StartupError) as error:
            await supervisor.start_stage([ServiceSpec("gateway", sleeper, http_ready(f"http://127.0.0.1:{free_port()}/healthz"))])
    finally:
        await supervisor.stop_all()
    assert "gateway was not ready after 1s" in str(error.value)
    assert "still booting" in str(error.value)


async def test_wait_for_exit_reports_the_service_that_died(tmp_path: Path) -> None:
    port = free_port()
    go = tmp_path / "exit-now"
    supervisor = Supervisor(tmp_path / "logs", echo=None, start_timeout=30)
    dies = python(
        f"""
        import os, socket, sys, time
        s = socket.socket(); s.bind(("127.0.0.1", {port})); s.listen()
        while not os.path.exists({str(go)!r}):
            time.sleep(0.05)
        print("exiting now", flush=True)
        sys.exit(7)
        """
    )
    try:
        await supervisor.start_stage([ServiceSpec("executor", dies, tcp_ready(port))])
        go.touch()
        died = await supervisor.wait_for_exit()
    finally:
        await supervisor.stop_all()
    assert died.name == "executor"
    assert "exit code 7" in died.describe_exit()
    assert "exiting now" in died.describe_exit()
