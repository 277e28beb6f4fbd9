"""Code contexts of a long-lived sandbox: Jupyter kernels that keep their variables between
runs, answering with rich results (E2B's code interpreter's Execution).

Each call is an ordinary sandbox command (so it is relayed, recorded and bounded like one):
it runs sandbox/runtime/kernel.py (/app/kernel.py) inside the sandbox, which starts, talks to
or stops the kernel there and prints one JSON answer. The gateway reads nothing of the
sandbox but that answer, checked against its model.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from corral.bounds import MAX_COMMAND_TIMEOUT_SECONDS
from corral.call_views import CodeContextView, ExecutionView
from corral.v1 import sandbox_calls_pb2 as calls_pb2
from gateway.backends import upstream
from gateway.body import JsonBody
from gateway.errors import ApiError
from gateway.routers.sandbox_calls import CALL_ERRORS, COMMAND_GRACE_SECONDS, CallerDep, SandboxStubsDep
from gateway.views import errors

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/contexts", tags=["code contexts"])

HELPER = "/app/kernel.py"
# Starting a kernel (first matplotlib import included) stays well under this.
START_TIMEOUT_SECONDS = 120.0
DEFAULT_RUN_TIMEOUT_SECONDS = 60.0
# Past the run's own timeout: the helper interrupts the kernel, then says so.
RUN_GRACE_SECONDS = 30.0
NOT_FOUND = "Unknown sandbox, or unknown code context."
# The helper's failures, by kind, as HTTP errors.
CONTEXT_ID = re.compile(r"^[0-9a-f]{32}$")
FAILURES = {"not_found": (404, "not_found"), "dead": (409, "failed_precondition")}


class ContextRequest(BaseModel):
    """POST /v1/sandboxes/{id}/contexts (an empty body is allowed)."""

    model_config = ConfigDict(extra="forbid")

    language: Literal["python"] = Field("python", description="The kernel's language.")
    cwd: str = Field("", description="Where its code runs, relative to the workspace (default: the workspace).")


class RunCodeRequest(BaseModel):
    """POST /v1/sandboxes/{id}/contexts/{context_id}/run."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="Source run as one notebook cell; the last expression's value is the main result.")
    timeout: float | None = Field(
        None, gt=0, le=MAX_COMMAND_TIMEOUT_SECONDS,
        description="Seconds (default 60); past it the kernel is interrupted (its variables kept) and "
        "the error is a TimeoutError.",
    )


CONTEXT_BODY = JsonBody(ContextRequest, required=False, example={"language": "python"})
RUN_BODY = JsonBody(RunCodeRequest, example={"code": "x = 41\nx + 1", "timeout": 60})


def driver(args: list[str], code: str = "") -> str:
    """The Python command that runs the helper with these arguments (and the cell's code, handed
    over as a literal: no quoting through a shell, no size limit of argv or the environment)."""
    return (
        "import runpy, sys\n"
        f"sys.argv = {[HELPER, *args]!r}\n"
        f"runpy.run_path({HELPER!r}, init_globals={{'CORRAL_CELL': {code!r}}}, run_name='__main__')\n"
    )


async def call_helper(
    stubs: Any, caller: Any, sandbox_id: str, args: list[str], *, timeout: float, code: str = "", cwd: str = ""
) -> dict[str, Any]:
    command = calls_pb2.SandboxCommand(tool="python", code=driver(args, code), cwd=cwd, timeout_seconds=timeout)
    async with upstream("scheduler"):
        reply = await stubs.sandboxes.RunSandboxCommand(
            calls_pb2.RunSandboxCommandRequest(sandbox_id=sandbox_id, command=command),
            metadata=caller, timeout=timeout + COMMAND_GRACE_SECONDS,
        )
    result = reply.event.exit
    if result.stdout_truncated:
        raise ApiError(502, "bad_gateway", "the execution's output is larger than the sandbox's output limit")
    lines = result.stdout.strip().splitlines()
    answer: Any = None
    if lines:
        try:
            answer = json.loads(lines[-1])
        except ValueError:
            answer = None
    if not isinstance(answer, dict):
        reason = result.error or result.stderr.strip()[-500:] or f"exit {result.exit_code}"
        if result.timed_out:
            reason = f"the code context did not answer within {timeout:g}s"
        raise ApiError(502, "bad_gateway", f"the sandbox's code-context helper gave no answer: {reason}")
    if "failure" in answer:
        status, code_name = FAILURES.get(str(answer.get("kind")), (502, "bad_gateway"))
        raise ApiError(status, code_name, str(answer["failure"]))
    return answer


def known(context_id: str) -> None:
    if not CONTEXT_ID.match(context_id):
        raise ApiError(404, "not_found", f"unknown code context {context_id!r}")


def checked(model: type[Any], answer: dict[str, Any]) -> Any:
    try:
        return model.model_validate(answer)
    except ValidationError:
        raise ApiError(502, "bad_gateway", "the sandbox's code-context helper answered malformed output") from None


@router.post(
    "",
    name="create_code_context",
    summary="Start a code context (a Jupyter kernel that keeps its state between runs)",
    status_code=201,
    response_model=CodeContextView,
    responses=errors(*CALL_ERRORS, 413, e404="Unknown sandbox."),
    openapi_extra=CONTEXT_BODY.openapi,
)
async def create_context(
    sandbox_id: str, body: Annotated[ContextRequest, Depends(CONTEXT_BODY)], stubs: SandboxStubsDep, caller: CallerDep
) -> JSONResponse:
    answer = await call_helper(stubs, caller, sandbox_id, ["start"], timeout=START_TIMEOUT_SECONDS, cwd=body.cwd)
    context: CodeContextView = checked(CodeContextView, answer)
    return JSONResponse(
        context.to_json(), status_code=201,
        headers={"Location": f"/v1/sandboxes/{sandbox_id}/contexts/{context.context_id}"},
    )


@router.post(
    "/{context_id}/run",
    name="run_code",
    summary="Run code in a code context: its output, rich results (PNG, HTML, JSON...) and error",
    response_model=ExecutionView,
    responses=errors(*CALL_ERRORS, 413, e404=NOT_FOUND, e409="The sandbox has ended, or the context's kernel died."),
    openapi_extra=RUN_BODY.openapi,
)
async def run_code(
    sandbox_id: str,
    context_id: str,
    body: Annotated[RunCodeRequest, Depends(RUN_BODY)],
    stubs: SandboxStubsDep,
    caller: CallerDep,
) -> JSONResponse:
    known(context_id)
    timeout = body.timeout or DEFAULT_RUN_TIMEOUT_SECONDS
    answer = await call_helper(
        stubs, caller, sandbox_id, ["run", context_id, "--timeout", repr(timeout)],
        timeout=timeout + RUN_GRACE_SECONDS, code=body.code,
    )
    execution: ExecutionView = checked(ExecutionView, answer)
    return JSONResponse(execution.to_json())


@router.delete(
    "/{context_id}",
    name="delete_code_context",
    summary="Stop a code context (its kernel and what it started)",
    status_code=204,
    responses=errors(*CALL_ERRORS, e404=NOT_FOUND),
)
async def delete_context(sandbox_id: str, context_id: str, stubs: SandboxStubsDep, caller: CallerDep) -> Response:
    known(context_id)
    await call_helper(stubs, caller, sandbox_id, ["stop", context_id], timeout=30.0)
    return Response(status_code=204)
