"""The blocking SDK's HTTP: kept-alive connections to the gateway (_http11.py's, on a socket).

Why not httpx here (the asyncio client's): importing httpx costs more than the whole of a
`corral run -q 'echo x'` may take (bench/cli_startup.py), and http.client half of it (see
_http11.py); the blocking client needs only HTTP/1.1 requests, raw bodies and a line-by-line
streamed answer. It connects directly (HTTP(S)_PROXY are not used); https verifies the
gateway's certificate against the system's CAs (SSL_CERT_FILE / SSL_CERT_DIR point elsewhere).
"""

from __future__ import annotations

import json
from _thread import allocate_lock
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlsplit

from corral import errors
from corral.sdk._http import Call, Connection, error_for
from corral.sdk._http11 import Answer, Headers, ProtocolError, RemoteDisconnected
from corral.sdk._http11 import Connection as HTTPConnection

# Failures of a reused keep-alive connection the gateway closed meanwhile: sent again, once,
# on a new connection (the request never reached the gateway).
_STALE = (RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class Response:
    """A complete answer: status, headers (case-insensitive) and body."""

    def __init__(self, status_code: int, headers: Headers, content: bytes) -> None:
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
        self._idle: list[HTTPConnection] = []
        # (_thread's lock is threading.Lock without importing threading.)
        self._lock = allocate_lock()

    def _take(self, timeout: float) -> tuple[HTTPConnection, bool]:
        """A connection for one request (and whether it served one before), its timeout set."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is not None and conn.sock is not None:
            conn.timeout = timeout
            conn.sock.settimeout(timeout)
            return conn, True
        if self._https:
            import ssl

            context = ssl.create_default_context()
            context.set_alpn_protocols(["http/1.1"])
            return HTTPConnection(self._host, self._port, timeout, context), False
        return HTTPConnection(self._host, self._port, timeout), False

    def _drop_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _give_back(self, conn: HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def _send(self, call: Call) -> tuple[HTTPConnection, Answer]:
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
                conn.request(call.method, target, body, headers)
                return conn, conn.getresponse()
            except _STALE:
                conn.close()
                if not reused or attempt == 2:
                    raise
                # The gateway closed it while idle: the other idle ones are as old; a new one.
                self._drop_idle()
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    def request(self, call: Call) -> Response:
        """The whole answer; a failed one (status >= 400) raises its typed error."""
        try:
            conn, answer = self._send(call)
        except (OSError, ProtocolError) as exc:
            raise self._unreachable(exc) from None
        try:
            content = answer.read()
        except (OSError, ProtocolError) as exc:
            conn.close()
            raise self._unreachable(exc) from None
        if answer.will_close:
            conn.close()
        else:
            self._give_back(conn)
        if answer.status >= 400:
            raise error_for(answer.status, content, dict(answer.headers.items()))
        return Response(answer.status, answer.headers, content)

    def open_stream(self, call: Call) -> Stream:
        """Sends `call`; its answer to be read as it comes (a failed answer raises its typed error)."""
        try:
            conn, answer = self._send(call)
        except (OSError, ProtocolError) as exc:
            raise self._unreachable(exc) from None
        stream = Stream(self, conn, answer)
        if answer.status >= 400:
            try:
                content = answer.read()
            except (OSError, ProtocolError) as exc:
                raise self._unreachable(exc) from None
            finally:
                stream.close()
            raise error_for(answer.status, content, dict(answer.headers.items()))
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

    def __init__(self, wire: Wire, conn: HTTPConnection, answer: Answer) -> None:
        self._wire, self.answer = wire, answer
        self._conn: HTTPConnection | None = conn
        self.status, self.headers = answer.status, answer.headers

    def set_timeout(self, seconds: float) -> None:
        """How long each read may wait from now on."""
        if self._conn is not None and self._conn.sock is not None:
            self._conn.sock.settimeout(seconds)

    def lines(self) -> Iterator[str]:
        try:
            while line := self.answer.readline():
                yield line.decode("utf-8", "replace").rstrip("\r\n")
        except (OSError, ProtocolError) as exc:
            raise self._wire._unreachable(exc) from None

    def read(self) -> bytes:
        try:
            return self.answer.read()
        except (OSError, ProtocolError) as exc:
            raise self._wire._unreachable(exc) from None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self.answer.isclosed() and not self.answer.will_close:
            self._wire._give_back(conn)
        else:
            conn.close()
