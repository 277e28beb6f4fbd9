"""The shared `corral up` of the CLI tests (helpers live in cli_helpers.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import CorralUp, services_missing, start_corral_up, stop


@pytest.fixture(scope="module")
def corral_up() -> Iterator[CorralUp]:
    missing = services_missing()
    if missing:
        pytest.skip("services not written yet: " + ", ".join(missing))
    # Under /tmp, not pytest's root-only tmp tree: sandboxes run as an unprivileged host uid.
    data_dir = Path(tempfile.mkdtemp(prefix="corral-cli-test-"))
    data_dir.chmod(0o755)
    up = start_corral_up(data_dir)
    try:
        yield up
    finally:
        stop(up.process)
        shutil.rmtree(data_dir, ignore_errors=True)
