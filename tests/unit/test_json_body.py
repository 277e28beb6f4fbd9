"""The gateway's JSON body parser refuses bodies nested too deep, however deep (gateway/body.py)."""

from __future__ import annotations

import pytest

from corral.bounds import MAX_JSON_DEPTH
from gateway.body import json_depth, parse_json
from gateway.errors import ApiError


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5000, 100_000])
def test_nesting_past_the_limit_is_a_400_not_a_recursion_error(depth: int) -> None:
    raw = ("[" * depth + "]" * depth).encode()
    with pytest.raises(ApiError) as caught:
        parse_json(raw)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_json"
    assert f"deeper than {MAX_JSON_DEPTH} levels" in caught.value.message


def test_nesting_up_to_the_limit_is_parsed() -> None:
    raw = ('{"a": ' * (MAX_JSON_DEPTH - 1) + "[1]" + "}" * (MAX_JSON_DEPTH - 1)).encode()
    assert json_depth(parse_json(raw)) == MAX_JSON_DEPTH


def test_depth_counts_arrays_and_objects_only() -> None:
    assert json_depth(3) == 0
    assert json_depth({"a": [1, {"b": "c"}]}) == 3
    assert json_depth([[], [[]]]) == 3
