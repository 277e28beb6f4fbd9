"""What the gateway's routes declare and send: the documents of corral.views, rendered through
their models, and the error responses each route can really give."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse

from corral.views import ErrorResponse, View

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed JSON or an invalid field or parameter (the message names it).",
    401: "No API key, or an unknown or revoked one (when keys are required); for a sandbox's pages, "
    "its token is missing.",
    403: "The token is wrong, or only the view-only token was given.",
    404: "Unknown task.",
    409: "The task or sandbox is in the wrong state for this (the message says which).",
    413: "Request body too large.",
    429: "A capacity is used up; try again later.",
    502: "A backing service (or the sandbox's Jupyter) failed.",
    503: "A backing service is unavailable.",
    504: "A backing service did not answer in time.",
}
# Every route that calls a backing service can give these: it forwards the caller's API key
# (401 when keys are required and it is not a valid one) and the service may fail.
UPSTREAM = (401, 502, 503, 504)


def errors(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: these error statuses, all with the ErrorResponse body.

    `descriptions` overrides the wording per status, keyed `e404="Unknown sandbox."`.
    """
    wording: Mapping[int, str] = {**ERROR_DESCRIPTIONS, **{int(k[1:]): v for k, v in descriptions.items()}}
    return {status: {"model": ErrorResponse, "description": wording[status]} for status in sorted(statuses)}


def binary(*media_types: str) -> dict[str, Any]:
    """A response (or request body) of raw bytes in these media types."""
    return {"content": {media: {"schema": {"type": "string", "format": "binary"}} for media in media_types}}


# A 200 that can also be a stream of Server-Sent Events (text: `event:` and `data:` lines).
SSE_STREAM: dict[str, Any] = {"content": {"text/event-stream": {"schema": {"type": "string"}}}}


# The usual set of a task route (kept for callers that want one default).
ERROR_RESPONSES = errors(400, 404, 413, *UPSTREAM)


def view_response(
    view: View, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """Renders `view` as the route's JSON (Starlette's JSON rendering, as before the models)."""
    return JSONResponse(view.to_json(), status_code=status_code, headers=headers)
