"""python -m services.executor"""

from __future__ import annotations

import asyncio
import os
import sys

from corral.config import load_settings
from corral.logs import configure_logging
from corral.tracing import configure_tracing, shutdown
from services.executor.server import serve


def use_pidfd_child_watcher() -> None:
    """Python 3.11 waits for each child process (each sandbox's bwrap) in a thread of its own,
    which then wakes the event loop: a sandbox's kill waited for two wake-ups under load. A
    pidfd in the event loop tells of the end itself (3.12 does this on its own)."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # a kernel before 5.3, or a seccomp profile refusing it
        return
    asyncio.set_child_watcher(asyncio.PidfdChildWatcher())


def main() -> None:
    use_pidfd_child_watcher()
    settings = load_settings()
    configure_logging("executor", settings.log_level, settings.log_json)
    configure_tracing("executor", settings)
    try:
        asyncio.run(serve(settings))
    finally:
        shutdown()


if __name__ == "__main__":
    main()
