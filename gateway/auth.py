"""The caller's API key at the REST edge: passed on to the scheduler, which owns the keys.

The gateway holds no key table. It forwards the request's `Authorization: Bearer ...` as the
`authorization` metadata of its gRPC calls; the scheduler resolves it to a tenant and answers
UNAUTHENTICATED (401 here, with `WWW-Authenticate: Bearer`) or, for another tenant's id,
NOT_FOUND exactly as for an unknown one. Without keys (the embedded loopback mode) the header
is not needed and every caller is the local tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from corral.api_keys import bearer, metadata_for
from corral.v1 import keys_pb2, keys_pb2_grpc
from gateway.backends import Backends, upstream

Metadata = tuple[tuple[str, str], ...]


def forwarded(conn: HTTPConnection) -> Metadata:
    """The gRPC metadata carrying the request's bearer key (none when it sends none)."""
    return metadata_for(bearer(conn.headers.get("authorization", "")))


@dataclass(frozen=True)
class Identity:
    tenant_id: str
    key_id: str
    admin: bool
    # Whether this deployment requires keys (without, every caller is the local admin).
    keys_required: bool = False


async def identity(backends: Backends, metadata: Metadata) -> Identity:
    """Who the key is (401 when keys are required and it is missing, unknown or revoked)."""
    async with upstream("scheduler"):
        reply = await keys_pb2_grpc.KeyServiceStub(backends.scheduler_channel).GetIdentity(
            keys_pb2.GetIdentityRequest(), metadata=metadata, timeout=backends.timeout
        )
    return Identity(reply.tenant_id, reply.key_id, reply.admin, reply.keys_required)


async def caller_metadata(conn: HTTPConnection) -> Metadata:
    """forwarded() as a coroutine dependency (a plain function's would run in a thread)."""
    return forwarded(conn)


CallerDep = Annotated[Metadata, Depends(caller_metadata)]
