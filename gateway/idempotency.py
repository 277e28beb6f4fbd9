"""The Idempotency-Key header of the creating routes (POST /schedule, /v1/tasks, /v1/sandboxes).

The scheduler keeps the keys (services/scheduler/idempotency.py); here the header is checked
with the same rule, so a bad one is a 400 naming it, and a replay is marked on the response.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header

from corral.idempotency import KEY_RULE, check_key

HEADER = "Idempotency-Key"
# On a response that answers a retry: nothing was created, this is the first request's result.
REPLAYED_HEADER = "Idempotent-Replayed"
REPLAYED = {REPLAYED_HEADER: "true"}


async def idempotency_key(
    key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            description="Retrying with the same key (within 24 hours) creates nothing and answers the "
            "first request's result (200, `Idempotent-Replayed: true`); the same key with a different "
            f"body is 409. {KEY_RULE}.",
        ),
    ] = None,
) -> str:
    """The header's key ("" without one); a bad one is a 400 naming the header. (A coroutine:
    FastAPI runs a plain function's dependency in its thread pool.)"""
    return "" if key is None else check_key(key, HEADER)


IdempotencyKeyDep = Annotated[str, Depends(idempotency_key)]
