"""Reading Server-Sent Events frames from a streaming httpx response, for the gateway tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Frame:
    id: str | None = None
    event: str | None = None
    data: str | None = None
    comment: str | None = None

    def json(self) -> Any:
        assert self.data is not None
        return json.loads(self.data)


def frames(response: httpx.Response) -> Iterator[Frame]:
    """Yields each frame as it arrives (comments, such as keep-alives, as their own frames)."""
    frame = Frame()
    for line in response.iter_lines():
        if line == "":
            if frame != Frame():
                yield frame
            frame = Frame()
        elif line.startswith(":"):
            yield Frame(comment=line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                frame.data = value if frame.data is None else frame.data + "\n" + value
            elif name in ("id", "event"):
                setattr(frame, name, value)
    if frame != Frame():
        yield frame


def events(response: httpx.Response) -> Iterator[Frame]:
    """Only the event frames, without keep-alive comments."""
    return (f for f in frames(response) if f.comment is None)
