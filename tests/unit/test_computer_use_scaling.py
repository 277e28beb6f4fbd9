"""The computer tool's display scaling (the model's space <-> the screen's) and the text
editor's `cat -n` rendering: pure functions, checked on their own."""

from __future__ import annotations

import pytest

from gateway.computer_use.computer import Display, scaled_size
from gateway.computer_use.editor import numbered
from gateway.computer_use.results import ToolInputError


def test_large_screens_are_scaled_to_anthropics_image_limits() -> None:
    assert scaled_size(1024, 768) == (1024, 768)
    assert scaled_size(1280, 800) == (1280, 800)
    width, height = scaled_size(1920, 1080)
    assert (width, height) == (1429, 804)
    assert width * height <= 1_150_000
    width, height = scaled_size(3840, 600)
    assert width == 1568 and height == 245


def test_coordinates_are_scaled_both_ways_and_checked() -> None:
    display = Display(width=1024, height=768, model_width=512, model_height=384)
    assert display.point([100, 50]) == (200, 100)
    assert display.to_model(200, 100) == (100, 50)
    assert display.point([511, 383]) == (1022, 766)
    with pytest.raises(ToolInputError, match=r"out of bounds: x must be in 0\.\.511"):
        display.point([512, 0])
    with pytest.raises(ToolInputError, match="list of two integers"):
        display.point([1.5, 2])
    with pytest.raises(ToolInputError, match="list of two integers"):
        display.point(None)


def test_views_are_numbered_as_cat_n() -> None:
    assert numbered("a\n\tb", "/f", first=9) == "Here's the result of running `cat -n` on /f:\n     9\ta\n    10\t        b\n"
