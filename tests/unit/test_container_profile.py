"""deploy/seccomp/executor-bwrap.json is what services.executor.container_profile makes, and
an unprivileged executor knows which of its paths its bubblewrap sandboxes can read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.executor.container_profile import BWRAP_NEEDS, executor_profile, render
from services.executor.drivers.base import SandboxError
from services.executor.drivers.bubblewrap import refuse_key_in_sandbox_view, sandbox_view_holding
from services.executor.drivers.seccomp import DENIED

REPO = Path(__file__).resolve().parents[2]


def test_the_committed_profile_is_the_generated_one() -> None:
    committed = (REPO / "deploy" / "seccomp" / "executor-bwrap.json").read_text()
    regenerate = "python -m services.executor.container_profile > deploy/seccomp/executor-bwrap.json"
    assert committed == render(), regenerate


def test_the_profile_allows_only_what_bwrap_needs_of_the_sandboxes_deny_list() -> None:
    denied = set(executor_profile()["syscalls"][0]["names"])
    assert set(DENIED) - denied == set(BWRAP_NEEDS) & set(DENIED)
    assert {"bpf", "keyctl", "open_by_handle_at", "setns", "kexec_load"} <= denied
    assert json.loads(render())["defaultAction"] == "SCMP_ACT_ALLOW"


def test_paths_a_sandbox_binds(tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    assert sandbox_view_holding(Path("/etc/corral/pki/executor.key"), runtime) == Path("/etc")
    assert sandbox_view_holding(Path("/usr/local/corral.key"), runtime) == Path("/usr")
    assert sandbox_view_holding(runtime / "executor.key", runtime) == runtime.resolve()
    assert sandbox_view_holding(Path("/var/run/corral/pki/executor.key"), runtime) is None
    with pytest.raises(SandboxError, match=r"TLS key /etc/x\.key is under /etc, which every sandbox binds"):
        refuse_key_in_sandbox_view(Path("/etc/x.key"), runtime)
    refuse_key_in_sandbox_view(tmp_path / "elsewhere.key", runtime)
