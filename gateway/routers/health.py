"""GET /healthz: whether the services behind the gateway answer."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from corral.views import ErrorDetail, HealthResponse, HealthUnavailableResponse
from gateway.deps import BackendsDep
from gateway.views import view_response

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    name="healthz",
    summary="Whether the scheduler and memory services answer",
    response_model=HealthResponse,
    responses={
        503: {"model": HealthUnavailableResponse, "description": "A service is down (named in the message)."}
    },
)
async def healthz(backends: BackendsDep) -> JSONResponse:
    services = await backends.health()
    down = [f"{name} ({state})" for name, state in services.items() if state != "serving"]
    if not down:
        return view_response(HealthResponse(status="ok", services=services))
    error = ErrorDetail(code="unavailable", message="not serving: " + ", ".join(down))
    return view_response(HealthUnavailableResponse(status="unavailable", services=services, error=error), 503)
