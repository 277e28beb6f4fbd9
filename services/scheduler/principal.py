"""Who is calling a public corral.v1 RPC: the tenant behind its API key.

`Authenticator.caller(context, method)` reads `authorization: Bearer crl_...` from the call's
metadata and answers a `Principal`, or raises Unauthenticated (no key, unknown or revoked key).
Without keys (the embedded loopback mode) every caller is the local tenant, with the run of
the place. This is the tenant identity only: which *service* may call which RPC is the mTLS
role check's business, which sits beside it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from corral.api_keys import AUTHORIZATION, KEY_PREFIX, LOCAL_TENANT, bearer, hash_key
from corral.errors import PermissionDenied, Unauthenticated
from corral.grpc_server import Context
from corral.v1 import keys_pb2

if TYPE_CHECKING:
    from corral.audit import AuditLog

    from .key_store import KeyStore


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    # '' without keys.
    key_id: str
    # Sees and manages every tenant's tasks, sandboxes and keys.
    admin: bool

    @property
    def scope(self) -> str | None:
        """The tenant whose records it may see; None for all (an admin)."""
        return None if self.admin else self.tenant_id

    def owns(self, tenant_id: str) -> bool:
        return self.admin or tenant_id == self.tenant_id


LOCAL = Principal(tenant_id=LOCAL_TENANT, key_id="", admin=True)


def presented_key(context: Context) -> str:
    for name, value in context.invocation_metadata() or ():
        if name == AUTHORIZATION:
            return bearer(value if isinstance(value, str) else bytes(value).decode(errors="replace"))
    return ""


# How long a verified key is trusted without asking the database again. A key revoked through
# this scheduler stops at once (forget); through another replica, within this time.
KEY_CACHE_SECONDS = 2.0


class Authenticator:
    def __init__(self, keys: KeyStore, required: bool, audit: AuditLog) -> None:
        self.keys = keys
        self.required = required
        self.audit = audit
        # SHA-256 of a presented key -> (when verified, its record); never the key itself.
        self._verified: dict[str, tuple[float, keys_pb2.ApiKey]] = {}

    async def _lookup(self, key: str) -> keys_pb2.ApiKey | None:
        digest = hash_key(key)
        cached = self._verified.get(digest)
        now = time.monotonic()
        if cached is not None and now - cached[0] < KEY_CACHE_SECONDS:
            return cached[1]
        record = await self.keys.lookup(key)
        if record is None:
            self._verified.pop(digest, None)
        else:
            if len(self._verified) > 10_000:  # bounded: presented keys are few, forged ones miss
                self._verified.clear()
            self._verified[digest] = (now, record)
        return record

    def forget(self, key_id: str) -> None:
        """A key was revoked: it stops working at once here."""
        self._verified = {d: v for d, v in self._verified.items() if v[1].key_id != key_id}

    async def caller(self, context: Context, method: str) -> Principal:
        if not self.required:
            return LOCAL
        key = presented_key(context)
        if not key:
            self.audit.refused(method, "no API key")
            raise Unauthenticated("an API key is required: send `authorization: Bearer <key>`")
        record = await self._lookup(key)
        if record is None:
            self.audit.refused(method, "unknown or revoked API key")
            raise Unauthenticated("the API key is unknown or revoked")
        return Principal(tenant_id=record.tenant_id, key_id=record.key_id, admin=record.admin)

    async def admin(self, context: Context, method: str) -> Principal:
        who = await self.caller(context, method)
        if not who.admin:
            self.audit.refused(method, "not an admin key", who)
            raise PermissionDenied(f"{method} needs an admin key")
        return who

    async def key_holder(self, context: Context) -> Principal | None:
        """The principal of a valid key presented with the call, else None (never raises):
        for the desktop and Jupyter, which also open with the sandbox's own token."""
        if not self.required:
            return None
        key = presented_key(context)
        record = await self._lookup(key) if key.startswith(KEY_PREFIX) else None
        if record is None:
            return None
        return Principal(tenant_id=record.tenant_id, key_id=record.key_id, admin=record.admin)
