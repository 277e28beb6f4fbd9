"""The gateway's words for bad JSON (field paths through both discriminated unions), and the
one mapping of errors to gRPC and HTTP."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from pydantic import ValidationError

from corral import errors, grpc_errors
from corral.schema import TaskRequest
from gateway.errors import field_path, validation_error


@pytest.mark.parametrize(
    ("loc", "path"),
    [
        (("steps", 1, "shell", "command"), "steps[1].command"),
        (("steps", 0, "gui", "click", "x"), "steps[0].x"),
        (("limits", "memory_mb"), "limits.memory_mb"),
        (("env", "gui"), "env.gui"),
    ],
)
def test_field_paths_drop_the_unions_tags(loc: tuple[Any, ...], path: str) -> None:
    assert field_path(loc) == path


def message_for(body: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as err:
        TaskRequest.model_validate(body)
    return validation_error(err.value.errors()).message


def test_unknown_tools_and_actions_are_named_with_the_choices() -> None:
    assert message_for({"steps": [{"tool": "bash"}]}).startswith("steps[0]: unknown tool 'bash' (expected one of shell,")
    assert message_for({"steps": [{"tool": "gui", "action": "fly"}]}).startswith(
        "steps[0].action: unknown gui action 'fly' (expected one of screenshot, move, click,"
    )
    assert message_for({"steps": [{"tool": "gui", "action": "key", "keys": "x+nokey"}]}).startswith(
        "steps[0].keys: unknown key 'nokey' in 'x+nokey'"
    )


def test_every_status_code_maps_to_one_class_and_back() -> None:
    for cls in (errors.InvalidArgument, errors.NotFound, errors.FailedPrecondition, errors.ResourceExhausted,
                errors.Unavailable, errors.PermissionDenied, errors.Unauthenticated):
        raised = grpc_errors.from_status(grpc_errors.status_code(cls), "why")
        assert type(raised) is cls and str(raised) == "why"
        assert grpc_errors.http_status(grpc_errors.status_code(cls)) == cls.http_status
    assert isinstance(grpc_errors.from_status(grpc.StatusCode.NOT_FOUND, "x"), LookupError)
    assert isinstance(grpc_errors.from_status(grpc.StatusCode.DEADLINE_EXCEEDED, "x"), TimeoutError)
    assert grpc_errors.http_status(grpc.StatusCode.INVALID_ARGUMENT) == 400
    assert grpc_errors.http_status(grpc.StatusCode.FAILED_PRECONDITION) == 409
    assert grpc_errors.http_status(grpc.StatusCode.DATA_LOSS) == 500
