"""The gateway's one HTTP mapping (gateway/errors.py over corral.errors) on a real FastAPI app."""

from __future__ import annotations

import grpc
import httpx
import pytest
from fastapi import FastAPI

from corral.errors import (
    AlreadyExists,
    CorralError,
    FailedPrecondition,
    InvalidTask,
    ResourceExhausted,
    SandboxUnavailable,
    TaskNotFound,
)
from gateway.errors import from_rpc_error, install_error_handlers


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(
    ("code", "status", "message"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400, "steps[0].shell.command is empty"),
        (grpc.StatusCode.NOT_FOUND, 404, "steps[0].shell.command is empty"),
        (grpc.StatusCode.ALREADY_EXISTS, 409, "steps[0].shell.command is empty"),
        (grpc.StatusCode.FAILED_PRECONDITION, 409, "steps[0].shell.command is empty"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "steps[0].shell.command is empty"),
        (grpc.StatusCode.PERMISSION_DENIED, 403, "steps[0].shell.command is empty"),
        (grpc.StatusCode.UNAUTHENTICATED, 401, "steps[0].shell.command is empty"),
        (grpc.StatusCode.UNIMPLEMENTED, 501, "steps[0].shell.command is empty"),
        (grpc.StatusCode.UNAVAILABLE, 503, "scheduler is not reachable: steps[0].shell.command is empty"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "scheduler is not reachable: steps[0].shell.command is empty"),
        (grpc.StatusCode.INTERNAL, 502, "scheduler failed: steps[0].shell.command is empty"),
        (grpc.StatusCode.UNKNOWN, 502, "scheduler failed: steps[0].shell.command is empty"),
    ],
)
def test_a_failed_call_maps_to_the_status_of_its_codes_class(code: grpc.StatusCode, status: int, message: str) -> None:
    error = from_rpc_error(rpc_error(code, "steps[0].shell.command is empty"), "scheduler")
    assert (error.status, error.code, error.message) == (status, code.name.lower(), message)


async def get_raising(exc: Exception) -> httpx.Response:
    """GET on an app with the gateway's handlers whose one route raises `exc`."""
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise exc

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        return await client.get("/boom")


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (InvalidTask("steps[1].timeout must be positive"), 400, "invalid_argument"),
        (TaskNotFound("no task with id 'x'"), 404, "not_found"),
        (AlreadyExists("sandbox s1 already exists here"), 409, "already_exists"),
        (FailedPrecondition("sandbox s1 is expired"), 409, "failed_precondition"),
        (ResourceExhausted("executor e1 is at capacity"), 429, "resource_exhausted"),
        (SandboxUnavailable("no executor with free capacity"), 503, "unavailable"),
    ],
)
async def test_a_corral_error_raised_in_the_gateway_is_json_with_its_status(
    exc: CorralError, status: int, code: str
) -> None:
    response = await get_raising(exc)
    assert response.status_code == status
    assert response.json() == {"error": {"code": code, "message": exc.message}}


async def test_a_raw_rpc_error_and_a_bug_are_json_too() -> None:
    response = await get_raising(rpc_error(grpc.StatusCode.NOT_FOUND, "no sandbox with id 'q'"))
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "no sandbox with id 'q'"}}
    response = await get_raising(KeyError("secret"))
    assert response.status_code == 500
    assert "secret" not in response.text
    assert response.json()["error"]["code"] == "internal"


def test_api_keys_never_reach_the_access_log() -> None:
    from gateway.access_log import redact

    key = "crl_" + "A1b2_-" * 7
    assert key not in redact(f"/v1/sandboxes/x/vnc/?token={key}")
    assert key not in redact(f"/v1/whatever/{key}?a=1")
    assert redact("/status?task_id=abc") == "/status?task_id=abc"
