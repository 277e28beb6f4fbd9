"""How the gateway is served: uvicorn's h11 protocol, with deadlines for reading a request.

uvicorn times out idle keep-alive connections, but not a request that is slow to arrive: a
client that sends half a request line, or headers without the body they announce, held its
connection (and a task) for as long as it liked (2,000 such requests were all still open after
70 s). Here a request's line and headers must arrive within `header_timeout` of its first byte
(or of the connection's opening), and its body within `body_timeout` of the headers; past
either, the connection is closed. Nothing limits the response (an event stream lasts as long
as its task), and an upgraded connection (WebSocket) is left to its own protocol.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from corral.config import Settings


class DeadlineH11Protocol(H11Protocol):
    header_timeout: float = 10.0
    body_timeout: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_deadline: asyncio.TimerHandle | None = None
        self._reading_body = False
        self._upgraded = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, body=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._read_deadline is None and self.conn.their_state is h11.IDLE:
            self._arm(self.header_timeout, body=False)  # the first byte of the next request
        super().data_received(data)
        self._follow_request()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # The WebSocket protocol takes the connection over; h11 still sees the upgrade
        # request's (empty) body as unread, so no deadline may be armed after this.
        self._upgraded = True
        self._disarm()
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_request()

    def _follow_request(self) -> None:
        """Moves the deadline along with the request: headers in, body in, or done."""
        if self._upgraded or self.transport.is_closing():
            self._disarm()
            return
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if not self._reading_body:
                self._arm(self.body_timeout, body=True)
        elif state is not h11.IDLE:
            self._disarm()  # the whole request is in (the response takes as long as it takes)

    def _arm(self, seconds: float, body: bool) -> None:
        self._disarm()
        if self._upgraded:
            return
        self._reading_body = body
        self._read_deadline = self.loop.call_later(seconds, self._cut_off)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _cut_off(self) -> None:
        self._read_deadline = None
        part = "body" if self._reading_body else "request line and headers"
        self.logger.info("closing a connection whose request %s did not arrive in time", part)
        if not self.transport.is_closing():
            self.transport.close()


def protocol_for(settings: Settings) -> type[DeadlineH11Protocol]:
    """The protocol class with the settings' deadlines (uvicorn makes one per connection)."""
    return type(
        "GatewayH11Protocol",
        (DeadlineH11Protocol,),
        {"header_timeout": settings.gateway_header_timeout_seconds, "body_timeout": settings.gateway_body_timeout_seconds},
    )
