"""Fixtures shared by every test folder. Helpers for real service processes: tests/harness.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from netlab import netlab  # noqa: F401  (the network test lab, tests/netlab.py)
