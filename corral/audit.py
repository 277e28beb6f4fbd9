"""The audit log: one JSON line per security-relevant event (a key created or revoked, a
sandbox created or deleted, a task submitted or cancelled, an access refused), naming the
key's id and tenant, never a key.

It is its own file (settings.audit_log_path, 0600), apart from the service's log, so it can be
kept, shipped and read on its own; events are written as they happen, one append per line, so
the scheduler and the gateway (its browser-guard refusals) may share it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, TextIO

import structlog


class Accountable(Protocol):
    """Who an event is about: the key's id and tenant (services/scheduler/principal.py's
    Principal), never the key."""

    @property
    def key_id(self) -> str: ...

    @property
    def tenant_id(self) -> str: ...


def _private_append(path: Path) -> TextIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)  # also when it existed with a wider mode
    return open(fd, "a", buffering=1, closefd=True)  # closed by AuditLog.close


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = _private_append(path)
        self._log: Any = structlog.wrap_logger(
            structlog.WriteLogger(self._file),
            processors=[
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.JSONRenderer(sort_keys=True),
            ],
        )

    def record(self, event: str, who: Accountable | None, **fields: Any) -> None:
        if who is not None:
            fields.setdefault("key_id", who.key_id)
            fields.setdefault("tenant_id", who.tenant_id)
        self._log.info(event, **fields)

    def refused(self, method: str, reason: str, who: Accountable | None = None, **fields: Any) -> None:
        self.record("access_refused", who, method=method, reason=reason, **fields)

    def close(self) -> None:
        self._file.close()
