"""A proto enum's values by the names the JSON API uses: TASK_STATE_COMPLETED -> "completed".

Derived from the generated descriptors, so a value added to a proto enum needs no table edit.
Standard library and protobuf only: the gui service (in the sandbox's runtime) uses it too.
"""

from __future__ import annotations

from typing import Any


def enum_names(enum: Any, prefix: str) -> dict[int, str]:
    """{number: lower-case name without `prefix`} for every value of a generated proto enum."""
    return {value.number: value.name.removeprefix(prefix).lower() for value in enum.DESCRIPTOR.values}
