"""corral.v1.KeyService (served by the scheduler): API keys, managed with an admin key."""

from __future__ import annotations

from corral.audit import AuditLog
from corral.grpc_server import Context
from corral.v1 import keys_pb2, keys_pb2_grpc

from .key_store import KeyStore
from .principal import Authenticator

SERVICE_NAME = keys_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name


class KeyServicer(keys_pb2_grpc.KeyServiceServicer):
    def __init__(self, keys: KeyStore, auth: Authenticator, audit: AuditLog) -> None:
        self._keys = keys
        self._auth = auth
        self._audit = audit

    async def CreateKey(self, request: keys_pb2.CreateKeyRequest, context: Context) -> keys_pb2.CreateKeyResponse:
        who = await self._auth.admin(context, "CreateKey")
        key, secret = await self._keys.create(request.name, request.tenant_id, request.admin)
        self._audit.record(
            "key_created", who, new_key_id=key.key_id, new_key_tenant_id=key.tenant_id, admin=key.admin
        )
        return keys_pb2.CreateKeyResponse(key=key, secret=secret)

    async def ListKeys(self, request: keys_pb2.ListKeysRequest, context: Context) -> keys_pb2.ListKeysResponse:
        await self._auth.admin(context, "ListKeys")
        return keys_pb2.ListKeysResponse(keys=await self._keys.all(request.include_revoked))

    async def RevokeKey(self, request: keys_pb2.RevokeKeyRequest, context: Context) -> keys_pb2.RevokeKeyResponse:
        who = await self._auth.admin(context, "RevokeKey")
        key = await self._keys.revoke(request.key_id)
        self._auth.forget(key.key_id)
        self._audit.record("key_revoked", who, revoked_key_id=key.key_id, revoked_key_tenant_id=key.tenant_id)
        return keys_pb2.RevokeKeyResponse(key=key)

    async def GetIdentity(
        self, request: keys_pb2.GetIdentityRequest, context: Context
    ) -> keys_pb2.GetIdentityResponse:
        who = await self._auth.caller(context, "GetIdentity")
        return keys_pb2.GetIdentityResponse(
            key_id=who.key_id, tenant_id=who.tenant_id, admin=who.admin, keys_required=self._auth.required
        )
