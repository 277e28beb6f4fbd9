"""What a sandbox's network looks like from outside: its rules and what they refused (and
the executor's totals over its sandboxes, NetworkTally)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from corral.network_rules import NetworkRules
from corral.v1 import sandbox_pb2


@dataclass(frozen=True)
class NetworkStatus:
    enabled: bool = False
    rules: NetworkRules = field(default_factory=NetworkRules)
    # Connection attempts the sandbox's nftables rules refused (packets counted).
    refused_connections: int = 0
    # Lookups the sandbox's resolver refused (denied names; nothing was forwarded).
    refused_lookups: int = 0
    recent_refused_names: list[str] = field(default_factory=list)

    def to_proto(self) -> sandbox_pb2.SandboxNetworkStatus:
        return sandbox_pb2.SandboxNetworkStatus(
            rules=self.rules.to_proto(),
            refused_connections=self.refused_connections,
            refused_lookups=self.refused_lookups,
            recent_refused_names=self.recent_refused_names,
        )


class _Reporting(Protocol):
    async def network_status(self) -> NetworkStatus: ...


class NetworkTally:
    """The executor's refused connections and lookups over all its sandboxes with network
    (GetExecutorStatus, the gateway's /metrics): the live ones' counters plus what the closed
    ones had counted when they went, so the totals only grow."""

    def __init__(self) -> None:
        self._live: set[_Reporting] = set()
        self._closed_connections = 0
        self._closed_lookups = 0

    def track(self, sandbox: _Reporting) -> None:
        self._live.add(sandbox)

    async def retire(self, sandbox: _Reporting) -> None:
        """Before the sandbox closes: its last counts join the closed totals."""
        if sandbox not in self._live:
            return
        status = await _status_of(sandbox)
        self._live.discard(sandbox)
        self._closed_connections += status.refused_connections
        self._closed_lookups += status.refused_lookups

    async def totals(self) -> tuple[int, int]:
        """(refused connections, refused lookups) so far."""
        statuses = [await _status_of(s) for s in list(self._live)]
        return (
            self._closed_connections + sum(s.refused_connections for s in statuses),
            self._closed_lookups + sum(s.refused_lookups for s in statuses),
        )


async def _status_of(sandbox: _Reporting) -> NetworkStatus:
    try:
        return await sandbox.network_status()
    except Exception:  # a sandbox dying meanwhile counts as nothing more, never fails a status
        return NetworkStatus()
