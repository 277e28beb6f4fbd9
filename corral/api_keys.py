"""API keys, the parts every process shares: their shape, their hash, how they travel, and
whether a deployment requires them (its auth mode).

A key is `crl_` + 43 URL-safe characters (32 random bytes): the prefix lets secret scanners
recognise a leaked one. The scheduler stores only its SHA-256 (a fast hash is enough for a
high-entropy secret: nobody can guess it offline); its `key_id` names it everywhere else.
Clients send it as `authorization: Bearer crl_...`, in HTTP headers and gRPC metadata alike.
"""

from __future__ import annotations

import hashlib
import secrets
import sys

from corral.config import Settings

KEY_PREFIX = "crl_"
AUTHORIZATION = "authorization"
# The tenant of everything made without keys (the embedded, loopback-only mode).
LOCAL_TENANT = "local"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer(value: str) -> str:
    """The credential in an `Authorization: Bearer ...` value ('' when it is not one)."""
    scheme, _, credential = value.strip().partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else ""


def metadata_for(key: str) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata that carries `key` (none for no key)."""
    return ((AUTHORIZATION, f"Bearer {key}"),) if key else ()


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, without port) is this machine's loopback."""
    import ipaddress

    host = host.strip("[]").lower().rstrip(".")
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def address_host(address: str) -> str:
    """The host of a gRPC listen address (host:port, [v6]:port, unix:path -> 'localhost')."""
    if address.startswith("unix:"):
        return "localhost"
    host, _, _ = address.rpartition(":")
    return host or address


def keys_required(settings: Settings, service: str, listen_host: str) -> bool:
    """Whether `service`, listening on `listen_host`, requires API keys (its auth mode).

    CORRAL_AUTH=keys: yes. off: no, with a loud warning when it listens beyond loopback.
    auto: no on loopback; beyond loopback the service refuses to start (SystemExit), since
    anyone who reaches it would otherwise act as the single local tenant.
    """
    loopback = is_loopback(listen_host)
    if settings.auth == "keys":
        return True
    if settings.auth == "off":
        if not loopback:
            print(
                f"WARNING: {service} listens on {listen_host} with CORRAL_AUTH=off: anyone who "
                "reaches it can run code, read every task and cancel them. Set CORRAL_AUTH=keys.",
                file=sys.stderr,
                flush=True,
            )
        return False
    if not loopback:
        raise SystemExit(
            f"{service}: refusing to listen on {listen_host} without API keys. Set "
            "CORRAL_AUTH=keys (and create the first admin key: `corral keys create --admin "
            "--name admin --database`), or CORRAL_AUTH=off to run unauthenticated on purpose."
        )
    return False
