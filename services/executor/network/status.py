"""What a sandbox's network looks like from outside: its rules and what they refused."""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.network_rules import NetworkRules


@dataclass(frozen=True)
class NetworkStatus:
    enabled: bool = False
    rules: NetworkRules = field(default_factory=NetworkRules)
    # Connection attempts the sandbox's nftables rules refused (packets counted).
    refused_connections: int = 0
    # Lookups the sandbox's resolver refused (denied names; nothing was forwarded).
    refused_lookups: int = 0
    recent_refused_names: list[str] = field(default_factory=list)
