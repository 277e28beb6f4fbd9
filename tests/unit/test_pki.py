"""corral.pki: the deployment's CA and certificates on disk."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from corral.config import Settings
from corral.pki import CA, PKIError, certified_executor_id, ensure_deployment, identity_of


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_creates_private_files_and_later_starts_reuse_them(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    assert ensure_deployment(pki, "host-1")
    assert mode(pki) == 0o700 and mode(pki / "ca.key") == 0o600
    for role in ("scheduler", "executor", "memory", "gateway", "admin"):
        assert mode(pki / f"{role}.key") == 0o600 and mode(pki / f"{role}.crt") == 0o644
    assert identity_of((pki / "executor.crt").read_bytes()) == ("executor", "host-1")
    assert identity_of((pki / "gateway.crt").read_bytes()) == ("gateway", "gateway")
    before = (pki / "ca.crt").read_bytes()
    assert not ensure_deployment(pki, "host-1")
    assert (pki / "ca.crt").read_bytes() == before


def test_an_incomplete_directory_is_named(tmp_path: Path) -> None:
    ensure_deployment(tmp_path, "e")
    (tmp_path / "memory.key").unlink()
    with pytest.raises(PKIError, match=r"incomplete certificate directory .*memory\.key"):
        ensure_deployment(tmp_path, "e")


def test_the_executor_id_is_the_certificates(tmp_path: Path) -> None:
    ensure_deployment(tmp_path, "executor-7")
    assert certified_executor_id(Settings(tls_dir=tmp_path)) == "executor-7"
    with pytest.raises(PKIError, match=r"CORRAL_EXECUTOR_ID is 'other' but the certificate .* is for executor 'executor-7'"):
        certified_executor_id(Settings(tls_dir=tmp_path, executor_id="other"))


def test_issue_refuses_unknown_roles_and_bad_names(tmp_path: Path) -> None:
    ensure_deployment(tmp_path, "e")
    ca = CA.load(tmp_path)
    with pytest.raises(PKIError, match="unknown role 'root'"):
        ca.issue("root", "x")
    with pytest.raises(PKIError, match="invalid name 'a/b'"):
        ca.issue("executor", "a/b")
