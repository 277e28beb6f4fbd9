"""/v1/keys: API keys, for an admin key (the scheduler's KeyService checks it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from corral.v1 import keys_pb2, keys_pb2_grpc
from corral.views import View
from gateway.auth import CallerDep
from gateway.backends import Backends, upstream
from gateway.body import JsonBody
from gateway.deps import BackendsDep, CallRoutesDep
from gateway.views import UPSTREAM, errors, view_response

router = APIRouter(prefix="/v1/keys", tags=["keys"])

ADMIN_ERRORS = errors(401, 403, *UPSTREAM, e401="No API key, or an unknown or revoked one.", e403="Not an admin key.")


class KeyRequest(BaseModel):
    """POST /v1/keys."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="What the key is for (e.g. ci, alice).")
    tenant_id: str = Field("", description="The tenant that owns what it makes (default: the name).")
    admin: bool = Field(False, description="Sees and manages every tenant and key.")


class KeyView(View):
    key_id: str
    name: str
    tenant_id: str
    admin: bool
    created_at: str
    revoked_at: str | None = None

    @classmethod
    def from_proto(cls, key: keys_pb2.ApiKey) -> KeyView:
        return cls(
            key_id=key.key_id, name=key.name, tenant_id=key.tenant_id, admin=key.admin,
            created_at=key.created_at.ToJsonString(),
            revoked_at=key.revoked_at.ToJsonString() if key.HasField("revoked_at") else None,
        )


class KeyCreated(KeyView):
    key: str = Field(description="The key itself: shown only in this response.")


class KeyList(View):
    keys: list[KeyView]


KEY_BODY = JsonBody(KeyRequest, example={"name": "ci", "tenant_id": "team-a"})


def _stub(backends: Backends) -> keys_pb2_grpc.KeyServiceAsyncStub:
    return keys_pb2_grpc.KeyServiceStub(backends.scheduler_channel)


@router.post(
    "", name="create_key", summary="Create an API key (shown once)", status_code=201,
    response_model=KeyCreated, responses={**ADMIN_ERRORS, **errors(400)}, openapi_extra=KEY_BODY.openapi,
)
async def create_key(
    body: Annotated[KeyRequest, Depends(KEY_BODY)], backends: BackendsDep, caller: CallerDep
) -> JSONResponse:
    async with upstream("scheduler"):
        reply = await _stub(backends).CreateKey(
            keys_pb2.CreateKeyRequest(name=body.name, tenant_id=body.tenant_id, admin=body.admin),
            metadata=caller, timeout=backends.timeout,
        )
    created = KeyCreated(**KeyView.from_proto(reply.key).model_dump(), key=reply.secret)
    return view_response(created, status_code=201, headers={"Cache-Control": "no-store"})


@router.get(
    "", name="list_keys", summary="List API keys", response_model=KeyList, responses={**ADMIN_ERRORS, **errors(400)}
)
async def list_keys(
    backends: BackendsDep,
    caller: CallerDep,
    include_revoked: Annotated[bool, Query(description="Also revoked keys.")] = False,
) -> JSONResponse:
    async with upstream("scheduler"):
        reply = await _stub(backends).ListKeys(
            keys_pb2.ListKeysRequest(include_revoked=include_revoked), metadata=caller, timeout=backends.timeout
        )
    return view_response(KeyList(keys=[KeyView.from_proto(k) for k in reply.keys]))


@router.delete(
    "/{key_id}", name="revoke_key", summary="Revoke an API key at once", response_model=KeyView,
    responses={**ADMIN_ERRORS, **errors(404, e404="Unknown key.")},
)
async def revoke_key(key_id: str, backends: BackendsDep, routes: CallRoutesDep, caller: CallerDep) -> JSONResponse:
    async with upstream("scheduler"):
        reply = await _stub(backends).RevokeKey(
            keys_pb2.RevokeKeyRequest(key_id=key_id), metadata=caller, timeout=backends.timeout
        )
    routes.forget()  # the gateway knows no key's routes from another's: it drops them all
    return view_response(KeyView.from_proto(reply.key))
