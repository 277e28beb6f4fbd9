"""GET /healthz: whether the services behind the gateway answer.

Down (503) only when the gateway cannot schedule: the scheduler does not answer. Memory down
is degraded (200, status "degraded", naming it): tasks are still scheduled, run and watched,
only history and search fail meanwhile, so a load balancer keeps such a gateway in rotation.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from corral.views import ErrorDetail, HealthResponse, HealthUnavailableResponse
from gateway.deps import BackendsDep
from gateway.views import view_response

router = APIRouter(tags=["health"])

# The services the gateway cannot schedule without; any other one down is degraded.
REQUIRED = ("scheduler",)
# What stops working while an optional service is down.
IMPACT = {"memory": "task history and search answer 503 until memory answers again"}


@router.get(
    "/healthz",
    name="healthz",
    summary="Whether the scheduler and memory services answer",
    response_model=HealthResponse,
    responses={
        200: {"description": "Can schedule: status 'ok', or 'degraded' naming the services down (memory)."},
        503: {
            "model": HealthUnavailableResponse,
            "description": "Cannot schedule: the scheduler is down (named in the message).",
        },
    },
)
async def healthz(backends: BackendsDep) -> JSONResponse:
    services = await backends.health()
    down = {name: state for name, state in services.items() if state != "serving"}
    if not down:
        return view_response(HealthResponse(status="ok", services=services))
    named = ", ".join(f"{name} ({state})" for name, state in down.items())
    if not any(name in down for name in REQUIRED):
        impact = "; ".join(IMPACT.get(name, f"{name} is unavailable") for name in down)
        return view_response(
            HealthResponse(
                status="degraded",
                services=services,
                degraded=list(down),
                message=f"not serving: {named}; tasks are still scheduled and run, but {impact}",
            )
        )
    error = ErrorDetail(code="unavailable", message="not serving: " + named)
    return view_response(HealthUnavailableResponse(status="unavailable", services=services, error=error), 503)
