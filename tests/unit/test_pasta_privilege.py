"""Whether pasta can run unprivileged: it opens the tun device itself, as its own uid."""

from __future__ import annotations

import os
from pathlib import Path

from corral.config import Settings
from services.executor.network import bwrap_net
from services.executor.network.pasta import command, tun_blocker


def test_a_tun_device_open_to_all_lets_pasta_run_unprivileged(tmp_path: Path) -> None:
    device = tmp_path / "tun"
    device.touch()
    os.chmod(device, 0o666)
    assert tun_blocker(65533, str(device)) == ""
    os.chmod(device, 0o600)
    words = tun_blocker(65533, str(device))
    assert "rw-------" in words and "not usable by uid 65533" in words and "chmod 0666" in words
    assert "No such file" in tun_blocker(65533, str(tmp_path / "missing"))


def test_pasta_never_runs_as_the_sandboxes_uid_or_root() -> None:
    for uid in (0, 65534):
        chosen, why = bwrap_net.pasta_uid(Settings(sandbox_network_helper_uid=uid))
        assert chosen is None and "root or the sandboxes' own uid" in why


def test_unprivileged_pasta_joins_the_owning_user_namespace_and_root_pasta_stays_root() -> None:
    unprivileged = command("pasta", "corral-sb-x", unprivileged=True)
    assert "--userns" in unprivileged and "--runas" not in unprivileged
    assert unprivileged[unprivileged.index("--userns") + 1] == "/run/corral-userns/corral-sb-x"
    assert command("pasta", "corral-sb-x", unprivileged=False)[3:5] == ["--runas", "0"]
