"""The blocking SDK's HTTP: one keep-alive connection to the gateway over the standard
library's http.client.

Why not httpx here (the asyncio client's): importing httpx costs more than the whole of a
`corral run -q 'echo x'` may take (bench/cli_startup.py); the blocking client needs only
HTTP/1.1 requests, raw bodies and a line-by-line streamed answer, which http.client does.
It connects directly (HTTP(S)_PROXY are not used); https verifies the gateway's certificate
against the system's CAs (SSL_CERT_FILE / SSL_CERT_DIR point elsewhere).
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlsplit

from corral import errors
from corral.sdk._http import Call, Connection, error_for

# Failures of a reused keep-alive connection the gateway closed meanwhile: sent again, once,
# on a new connection (the request never reached the gateway).
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class Response:
    """A complete answer: status, headers (case-insensitive) and body."""

    def __init__(self, status_code: int, headers: http.client.HTTPMessage, content: bytes) -> None:
        self.status_code, self.headers, self.content = status_code, headers, content

    def json(self) -> Any:
        return json.loads(self.content)


def _query(params: dict[str, Any]) -> str:
    parts = []
    for name, value in params.items():
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        parts.append(f"{quote(str(name), safe='')}={quote(text, safe='')}")
    return "&".join(parts)


class Wire:
    """Requests to one gateway, each on a kept-alive connection of its own: a request made while
    another is under way (an `on_stdout` callback writing a file while its command streams, or
    another thread) takes another connection; idle ones are kept for the next request."""

    MAX_IDLE = 4

    def __init__(self, connection: Connection, timeout: float) -> None:
        self.connection = connection
        self.timeout = timeout
        url = urlsplit(connection.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise errors.InvalidArgument(f"the gateway's URL must be http(s)://HOST[:PORT], not {connection.url!r}")
        self._https = url.scheme == "https"
        self._host, self._port = url.hostname, url.port
        self._prefix = url.path.rstrip("/")
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _take(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """A connection for one request (and whether it served one before), its timeout set."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is not None and conn.sock is not None:
            conn.timeout = timeout
            conn.sock.settimeout(timeout)
            return conn, True
        if self._https:
            import ssl

            return http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=ssl.create_default_context()
            ), False
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout), False

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def _send(self, call: Call) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Sends `call`; the answer's status line and headers have been read."""
        body: bytes | None = None
        headers = {**self.connection.headers, **call.headers}
        if call.json is not None:
            body = json.dumps(call.json).encode()
            headers.setdefault("Content-Type", "application/json")
        elif call.content is not None:
            body = call.content
        elif call.method in ("POST", "PUT", "PATCH"):
            body = b""
        query = _query(dict(call.params))
        target = self._prefix + call.path + (f"?{query}" if query else "")
        timeout = call.timeout if call.timeout is not None else self.timeout
        for attempt in (1, 2):
            conn, reused = self._take(timeout)
            try:
                conn.request(call.method, target, body=body, headers=headers)
                return conn, conn.getresponse()
            except _STALE:
                conn.close()
                if not reused or attempt == 2:
                    raise
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    def request(self, call: Call) -> Response:
        """The whole answer; a failed one (status >= 400) raises its typed error."""
        try:
            conn, answer = self._send(call)
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        try:
            content = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._unreachable(exc) from None
        if answer.will_close:
            conn.close()
        else:
            self._give_back(conn)
        if answer.status >= 400:
            raise error_for(answer.status, content, {k.lower(): v for k, v in answer.headers.items()})
        return Response(answer.status, answer.headers, content)

    def open_stream(self, call: Call) -> Stream:
        """Sends `call`; its answer to be read as it comes (a failed answer raises its typed error)."""
        try:
            conn, answer = self._send(call)
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        stream = Stream(self, conn, answer)
        if answer.status >= 400:
            try:
                content = answer.read()
            except (OSError, http.client.HTTPException) as exc:
                raise self._unreachable(exc) from None
            finally:
                stream.close()
            raise error_for(answer.status, content, {k.lower(): v for k, v in answer.headers.items()})
        return stream

    @contextmanager
    def stream(self, call: Call) -> Iterator[Iterator[str]]:
        """The answer's lines as they come (a failed answer raises its typed error)."""
        stream = self.open_stream(call)
        try:
            yield stream.lines()
        finally:
            stream.close()

    def _unreachable(self, exc: BaseException) -> errors.CorralError:
        if isinstance(exc, TimeoutError):
            return errors.DeadlineExceeded(f"no answer from Corral at {self.connection.url} in time")
        return errors.Unavailable(f"cannot reach Corral at {self.connection.url}: {exc or type(exc).__name__}")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class Stream:
    """An answer being read as it comes: its status and headers, then its lines; close() when
    done with it. Read to its end, its connection serves the next request; left before, it is
    closed (it cannot carry another request)."""

    def __init__(self, wire: Wire, conn: http.client.HTTPConnection, answer: http.client.HTTPResponse) -> None:
        self._wire, self.answer = wire, answer
        self._conn: http.client.HTTPConnection | None = conn
        self.status, self.headers = answer.status, answer.headers

    def set_timeout(self, seconds: float) -> None:
        """How long each read may wait from now on."""
        if self._conn is not None and self._conn.sock is not None:
            self._conn.sock.settimeout(seconds)

    def lines(self) -> Iterator[str]:
        try:
            while line := self.answer.readline():
                yield line.decode("utf-8", "replace").rstrip("\r\n")
        except (OSError, http.client.HTTPException) as exc:
            raise self._wire._unreachable(exc) from None

    def read(self) -> bytes:
        try:
            return self.answer.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._wire._unreachable(exc) from None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self.answer.isclosed() and not self.answer.will_close:
            self._wire._give_back(conn)
        else:
            conn.close()
