"""Reading a JSON request body: size cap, JSON with line/column errors, validation by a model.

The gateway parses bodies itself rather than letting FastAPI do it, so an oversized chunked
body is stopped while it streams in. (Only `application/json` bodies get here: see
gateway/browser_guard.py.) `JsonBody(Model)` is the route
dependency that does it, and `openapi` the route's declared request body: the same model,
whose JSON schema /openapi.json carries (gateway/openapi.py collects BODY_MODELS).
"""

from __future__ import annotations

import json
from typing import Any, Generic, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from corral.bounds import MAX_JSON_DEPTH
from gateway.errors import ApiError, validation_error

M = TypeVar("M", bound=BaseModel)
# Models of the request bodies routes declare, for the OpenAPI components.
BODY_MODELS: list[type[BaseModel]] = []


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"request body is larger than {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _too_large(limit)
        except ValueError:
            raise ApiError(400, "bad_request", "Content-Length is not a number") from None
    chunks: list[bytes] = []
    received = 0
    # Count while reading too: chunked bodies declare no length.
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        # Gone before its body arrived (or cut off by the body deadline, gateway/serving.py):
        # nobody reads the answer; not an error of ours to log with a traceback.
        raise ApiError(400, "bad_request", "the request's body did not arrive: the client went away") from None
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise ApiError(400, "invalid_json", "request body is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_json", f"request body is not UTF-8: {exc.reason}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400,
            "invalid_json",
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
        ) from None
    except RecursionError:
        # The parser recurses per level; far past MAX_JSON_DEPTH it runs out of stack.
        raise _too_deep() from None
    if json_depth(document) > MAX_JSON_DEPTH:
        raise _too_deep()
    return document


def _too_deep() -> ApiError:
    return ApiError(400, "invalid_json", f"request body nests objects and arrays deeper than {MAX_JSON_DEPTH} levels")


def json_depth(document: Any) -> int:
    """How deep arrays and objects nest in `document` (a scalar is 0), without recursing."""
    deepest = 0
    pending = [(document, 1)]
    while pending:
        node, depth = pending.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_JSON_DEPTH:  # past the limit the answer is known
            pending.extend((child, depth + 1) for child in children)
    return deepest


JSON_TYPE_NAMES = {list: "an array", str: "a string", int: "a number", float: "a number"}


def validate_body(document: Any, model: type[M], expected: str = "") -> M:
    if not isinstance(document, dict):
        kind = "null" if document is None else JSON_TYPE_NAMES.get(type(document), "a boolean")
        raise ApiError(400, "invalid_argument", f"request body must be a JSON object{expected}, not {kind}")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False)) from None


class JsonBody(Generic[M]):
    """A route dependency: the request body as `model`, read under the size limit.

    `required=False`: an empty body means the model's defaults (every field has one).
    """

    def __init__(self, model: type[M], *, required: bool = True, expected: str = "", example: Any = None) -> None:
        self.model = model
        self.required = required
        self.expected = expected
        # A body the route accepts, shown in /openapi.json (and checked against the model by the tests).
        self.example = example
        BODY_MODELS.append(model)

    async def __call__(self, request: Request) -> M:
        raw = await read_body(request, request.app.state.settings.max_request_bytes)
        if not self.required and not raw.strip():
            return self.model()
        return validate_body(parse_json(raw), self.model, self.expected)

    @property
    def openapi(self) -> dict[str, Any]:
        """The route's `openapi_extra`: its request body is this model."""
        media: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{self.model.__name__}"}}
        if self.example is not None:
            media["example"] = self.example
        return {"requestBody": {"required": self.required, "content": {"application/json": media}}}
