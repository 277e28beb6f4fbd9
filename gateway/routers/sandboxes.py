"""/v1/sandboxes: long-lived sandboxes (create, list, get, extend, delete, network rules)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from corral.bounds import MAX_TTL_SECONDS
from corral.errors import InvalidArgument
from corral.network_json import NETWORK_DESCRIPTION, NetworkField, NetworkRulesModel, network_to_proto
from corral.schema import LimitsModel, seconds_to_duration
from corral.v1 import sandbox_pb2, task_pb2
from corral.views import SandboxCreated, SandboxList, SandboxView
from gateway.auth import CallerDep
from gateway.backends import upstream
from gateway.body import JsonBody
from gateway.deps import SandboxStubsDep
from gateway.idempotency import REPLAYED, IdempotencyKeyDep
from gateway.views import UPSTREAM, errors, view_response

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])

CREATE_TIMEOUT_SECONDS = 180.0


class SandboxRequest(BaseModel):
    """POST /v1/sandboxes (every field has a default; an empty body is allowed)."""

    model_config = ConfigDict(extra="forbid")

    desktop: bool = Field(False, description="Start a desktop (Xvfb, window manager, VNC, gui service).")
    network: NetworkField = Field(False, description=NETWORK_DESCRIPTION)
    limits: LimitsModel | None = None
    ttl: float | None = Field(
        None, gt=0, le=MAX_TTL_SECONDS, allow_inf_nan=False,
        description="Seconds it lives unless extended (default 3600; at most a year, and at most the "
        "deployment's CORRAL_SANDBOX_MAX_TTL_SECONDS).",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")

    def to_proto(self) -> sandbox_pb2.SandboxSpec:
        network, rules = network_to_proto(self.network)
        spec = sandbox_pb2.SandboxSpec(desktop=self.desktop, network=network, network_rules=rules, env=self.env)
        if self.limits is not None:
            spec.limits.CopyFrom(task_pb2.Limits(**self.limits.model_dump()))
        if self.ttl is not None:
            spec.ttl.CopyFrom(seconds_to_duration(self.ttl))
        return spec


class ExtendRequest(BaseModel):
    """POST /v1/sandboxes/{id}/extend (an empty body is allowed)."""

    model_config = ConfigDict(extra="forbid")

    ttl: float | None = Field(
        None, gt=0, le=MAX_TTL_SECONDS, allow_inf_nan=False,
        description="New lifetime from now, seconds (default: its ttl; capped like a new sandbox's).",
    )


class NetworkRulesRequest(NetworkRulesModel):
    """PUT /v1/sandboxes/{id}/network: the new rules, replacing the old ones whole (`{}`: the
    default policy). Checked like the create's `"network"` object, a bad rule named."""

    @model_validator(mode="after")
    def _rules_parse(self) -> NetworkRulesRequest:
        try:
            self.parse()
        except InvalidArgument as exc:
            raise ValueError(str(exc).removeprefix("network.")) from None
        return self


CREATE_BODY = JsonBody(SandboxRequest, required=False, example={"desktop": False, "network": False, "ttl": 3600})
EXTEND_BODY = JsonBody(ExtendRequest, required=False, example={"ttl": 3600})
NETWORK_BODY = JsonBody(
    NetworkRulesRequest, expected=' ({"allow": [...], "deny": [...]})', example={"allow": ["pypi.org:443"]}
)
NOT_FOUND = "Unknown sandbox."


@router.post(
    "",
    name="create_sandbox",
    summary="Create a long-lived sandbox",
    status_code=201,
    response_model=SandboxCreated,
    responses={
        **errors(
            400, 409, 413, 429, *UPSTREAM,
            e409="The Idempotency-Key was used for a different request.",
            e429="A quota, or what the executors can hold, is used up (Retry-After says when to retry).",
            e503="No executor can host it, or a service is unavailable.",
        ),
        200: {
            "model": SandboxView,
            "description": "A replay (Idempotency-Key seen before): the sandbox, without its tokens (shown once).",
        },
    },
    openapi_extra=CREATE_BODY.openapi,
)
async def create_sandbox(
    body: Annotated[SandboxRequest, Depends(CREATE_BODY)],
    stubs: SandboxStubsDep,
    caller: CallerDep,
    idempotency_key: IdempotencyKeyDep,
) -> JSONResponse:
    async with upstream("scheduler"):
        reply = await stubs.sandboxes.CreateSandbox(
            sandbox_pb2.CreateSandboxRequest(spec=body.to_proto(), idempotency_key=idempotency_key),
            metadata=caller,
            timeout=CREATE_TIMEOUT_SECONDS,
        )
    if reply.replayed:
        return view_response(SandboxView.from_proto(reply.sandbox), headers=REPLAYED)
    created = SandboxCreated.from_reply(reply)
    return view_response(created, status_code=201, headers={"Location": f"/v1/sandboxes/{created.sandbox_id}"})


@router.get("", name="list_sandboxes", summary="List sandboxes", response_model=SandboxList, responses=errors(400, *UPSTREAM))
async def list_sandboxes(
    stubs: SandboxStubsDep,
    caller: CallerDep,
    include_ended: Annotated[bool, Query(description="Also deleted and expired ones.")] = False,
) -> JSONResponse:
    async with upstream("scheduler"):
        reply = await stubs.sandboxes.ListSandboxes(
            sandbox_pb2.ListSandboxesRequest(include_ended=include_ended), metadata=caller, timeout=stubs.timeout
        )
    return view_response(SandboxList(sandboxes=[SandboxView.from_proto(s) for s in reply.sandboxes]))


@router.get(
    "/{sandbox_id}",
    name="get_sandbox",
    summary="Get a sandbox",
    response_model=SandboxView,
    responses=errors(404, *UPSTREAM, e404=NOT_FOUND),
)
async def get_sandbox(sandbox_id: str, stubs: SandboxStubsDep, caller: CallerDep) -> JSONResponse:
    async with upstream("scheduler"):
        reply = await stubs.sandboxes.GetSandbox(
            sandbox_pb2.GetSandboxRequest(sandbox_id=sandbox_id), metadata=caller, timeout=stubs.timeout
        )
    return view_response(SandboxView.from_proto(reply.sandbox))


@router.post(
    "/{sandbox_id}/extend",
    name="extend_sandbox",
    summary="Extend a sandbox's lifetime (to now + ttl)",
    response_model=SandboxView,
    responses=errors(400, 404, 409, 413, *UPSTREAM, e404=NOT_FOUND, e409="The sandbox has ended."),
    openapi_extra=EXTEND_BODY.openapi,
)
async def extend_sandbox(
    sandbox_id: str, body: Annotated[ExtendRequest, Depends(EXTEND_BODY)], stubs: SandboxStubsDep, caller: CallerDep
) -> JSONResponse:
    message = sandbox_pb2.ExtendSandboxRequest(sandbox_id=sandbox_id)
    if body.ttl is not None:
        message.ttl.CopyFrom(seconds_to_duration(body.ttl))
    async with upstream("scheduler"):
        reply = await stubs.sandboxes.ExtendSandbox(message, metadata=caller, timeout=stubs.timeout)
    return view_response(SandboxView.from_proto(reply.sandbox))


@router.delete(
    "/{sandbox_id}",
    name="delete_sandbox",
    summary="Delete a sandbox (kills everything in it)",
    response_model=SandboxView,
    responses=errors(404, *UPSTREAM, e404=NOT_FOUND),
)
async def delete_sandbox(sandbox_id: str, stubs: SandboxStubsDep, caller: CallerDep) -> JSONResponse:
    try:
        async with upstream("scheduler"):
            reply = await stubs.sandboxes.DeleteSandbox(
                sandbox_pb2.DeleteSandboxRequest(sandbox_id=sandbox_id), metadata=caller, timeout=stubs.timeout
            )
    finally:
        stubs.calls.forget(sandbox_id)  # its calls stop going straight to its executor
    return view_response(SandboxView.from_proto(reply.sandbox))


@router.put(
    "/{sandbox_id}/network",
    name="update_sandbox_network",
    summary="Replace a sandbox's network rules (new connections follow them at once)",
    response_model=SandboxView,
    responses=errors(
        400, 404, 409, 413, *UPSTREAM, e404=NOT_FOUND,
        e409="The sandbox has ended, or was created without network.",
    ),
    openapi_extra=NETWORK_BODY.openapi,
)
async def update_sandbox_network(
    sandbox_id: str,
    body: Annotated[NetworkRulesRequest, Depends(NETWORK_BODY)],
    stubs: SandboxStubsDep,
    caller: CallerDep,
) -> JSONResponse:
    message = sandbox_pb2.UpdateSandboxNetworkRequest(sandbox_id=sandbox_id, rules=body.to_proto())
    async with upstream("scheduler"):
        reply = await stubs.sandboxes.UpdateSandboxNetwork(message, metadata=caller, timeout=stubs.timeout)
    return view_response(SandboxView.from_proto(reply.sandbox))
