"""The services' event loop: uvloop where it is installed, else asyncio's own.

Measured on the 2-core reference machine (`perf record -a` over bursts of 200 one-step tasks,
in alternation): uvloop takes the scheduler from 25-30 to 21-24 ms of CPU per task, and the
memory service from 11-15 to 10-11. gRPC's asyncio stack runs on any asyncio loop. The executor
stays on asyncio's loop: its sandboxes are subprocesses with inherited descriptors and pidfds,
whose handling differs under uvloop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")


def chosen(setting: Literal["auto", "uvloop", "asyncio"]) -> Literal["uvloop", "asyncio"]:
    """The loop `setting` (Settings.event_loop) means here; SystemExit if uvloop is asked for
    and missing."""
    if setting == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError as exc:
        if setting == "uvloop":
            raise SystemExit("CORRAL_EVENT_LOOP=uvloop, but uvloop is not installed") from exc
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T], setting: Literal["auto", "uvloop", "asyncio"]) -> T:
    """asyncio.run(main) on the chosen loop."""
    if chosen(setting) == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
