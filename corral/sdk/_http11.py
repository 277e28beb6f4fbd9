"""One HTTP/1.1 client connection on a plain socket (TLS through ssl), for the blocking SDK.

Why not http.client: it parses every answer's headers with the email package, which (with
ssl, imported whether or not https is used) is half of what `corral run -q 'echo x'` costs to
start (bench/cli_startup.py). The gateway's answers need only this: a status line, headers,
and a body framed by Content-Length, chunked transfer encoding (its event streams) or the
connection's close. What http.client guards against is guarded here too: CR/LF in a header
(ValueError), bounded status and header lines, at most 100 headers, 1xx answers skipped, a
body shorter than announced (ProtocolError), a kept-alive connection closed before it answered
(RemoteDisconnected, so the caller may send again).

Plain http runs on the socket module's C half (_socket): socket.py itself (its enums, built by
scanning every constant, and selectors) costs more to import than this whole client; https
needs socket.py's socket (ssl wraps it), and imports it.
"""

from __future__ import annotations

import _socket
import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl
    from collections.abc import Iterator, Mapping
    from io import BufferedReader

    from _typeshed import WriteableBuffer

# http.client's bounds: a status or header line, the number of headers.
MAX_LINE = 65536
MAX_HEADERS = 100


class ProtocolError(Exception):
    """An answer that is not valid HTTP/1.1 (or ends before its body does)."""


class RemoteDisconnected(ConnectionResetError):
    """The server closed the connection without answering (e.g. an idle kept-alive one)."""


class Headers:
    """An answer's headers: names case-insensitive, repeated ones joined with ', '."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}

    def add(self, name: str, value: str) -> None:
        key = name.lower()
        self._values[key] = f"{self._values[key]}, {value}" if key in self._values else value

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._values.get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return self._values[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def items(self) -> Iterator[tuple[str, str]]:
        return iter(self._values.items())


class Answer:
    """An answer whose status line and headers have been read; its body is read on demand."""

    def __init__(self, file: BufferedReader, method: str) -> None:
        self._file = file
        self.status, self.reason, version = self._status_line()
        while 100 <= self.status < 200 and self.status != 101:  # 100 Continue & co: skipped
            self._headers()
            self.status, self.reason, version = self._status_line()
        self.headers = self._headers()
        connection = (self.headers.get("connection") or "").lower()
        self._chunked = "chunked" in (self.headers.get("transfer-encoding") or "").lower()
        self._left: int | None = None  # bytes of the body (or of the current chunk) not yet read
        self._done = False
        if method == "HEAD" or self.status in (204, 304) or self.status < 200:
            self._left, self._done = 0, True
        elif not self._chunked and "content-length" in self.headers:
            try:
                self._left = int(self.headers["content-length"])
            except ValueError:
                raise ProtocolError(f"bad Content-Length {self.headers['content-length']!r}") from None
            if self._left < 0:
                raise ProtocolError(f"bad Content-Length {self._left}")
            self._done = self._left == 0
        elif self._chunked:
            self._left = 0
        read_to_close = not self._chunked and self._left is None
        self.will_close = (
            "close" in connection or read_to_close or (version == "HTTP/1.0" and "keep-alive" not in connection)
        )
        self._pending = b""  # a chunked body's bytes read but not yet returned

    def _line(self) -> bytes:
        line = self._file.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise ProtocolError("an answer's line is too long")
        return line

    def _status_line(self) -> tuple[int, str, str]:
        line = self._line()
        if not line:
            raise RemoteDisconnected("Remote end closed connection without response")
        version, _, rest = line.decode("latin-1").rstrip("\r\n").partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/") or len(code) != 3 or not code.isdigit() or int(code) < 100:
            raise ProtocolError(f"not an HTTP status line: {line[:80]!r}")
        return int(code), reason.strip(), version

    def _headers(self) -> Headers:
        headers = Headers()
        for _ in range(MAX_HEADERS + 1):
            line = self._line()
            if line in (b"\r\n", b"\n", b""):
                return headers
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep or not name or name != name.strip():
                raise ProtocolError(f"not an HTTP header: {line[:80]!r}")
            headers.add(name, value.strip())
        raise ProtocolError(f"more than {MAX_HEADERS} headers")

    def _exactly(self, size: int) -> bytes:
        data = self._file.read(size)
        if len(data) < size:
            raise ProtocolError(f"the answer ended {size - len(data)} bytes before its body did")
        return data

    def _next_chunk(self) -> bytes:
        """The chunked body's next chunk (b'' at its end, trailers skipped)."""
        if self._done:
            return b""
        line = self._line()
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size line {line[:80]!r}") from None
        if size == 0:
            while self._line() not in (b"\r\n", b"\n", b""):
                pass
            self._done = True
            return b""
        data = self._exactly(size)
        self._exactly(2)  # the chunk's CRLF
        return data

    def read(self) -> bytes:
        """The rest of the body."""
        if self._chunked:
            parts = [self._pending]
            self._pending = b""
            while chunk := self._next_chunk():
                parts.append(chunk)
            return b"".join(parts)
        if self._done:
            return b""
        self._done = True
        if self._left is None:
            return self._file.read()
        return self._exactly(self._left)

    def isclosed(self) -> bool:
        """Whether the body has been read to its end."""
        return self._done and not self._pending

    def readline(self) -> bytes:
        """The body's next line, its newline kept (b'' at the body's end)."""
        if self._chunked:
            while (end := self._pending.find(b"\n")) < 0:
                chunk = self._next_chunk()
                if not chunk:
                    line, self._pending = self._pending, b""
                    return line
                self._pending += chunk
            line, self._pending = self._pending[: end + 1], self._pending[end + 1 :]
            return line
        if self._done:
            return b""
        line = self._file.readline(-1 if self._left is None else self._left)
        if self._left is not None:
            self._left -= len(line)
            if not line and self._left:
                raise ProtocolError(f"the answer ended {self._left} bytes before its body did")
            self._done = self._left == 0
        elif not line:
            self._done = True
        return line


class Connection:
    """A connection to host:port (over TLS when given a context), opened at its first request;
    one answer at a time, read to its end before the next request."""

    def __init__(self, host: str, port: int | None, timeout: float, context: ssl.SSLContext | None = None) -> None:
        self.host, self.timeout, self.context = host, timeout, context
        self.port = port or (443 if context is not None else 80)
        self.sock: _socket.socket | None = None
        self._file: BufferedReader | None = None
        self._method = "GET"
        # The Host header: an IPv6 address in brackets, the port unless it is the scheme's own.
        name = f"[{host}]" if ":" in host else _ascii_host(host)
        self._host_header = name if port in (None, 443 if context is not None else 80) else f"{name}:{self.port}"

    def _connect(self) -> _socket.socket:
        if self.context is None:
            plain = _open(self.host, self.port, self.timeout)
            self.sock, self._file = plain, io.BufferedReader(_Reader(plain))
            return plain
        import socket

        sock = socket.create_connection((self.host, self.port), self.timeout)
        try:
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            sock = self.context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock, self._file = sock, sock.makefile("rb")
        return sock

    def request(self, method: str, target: str, body: bytes | None, headers: Mapping[str, str]) -> None:
        if not target.startswith("/") or any(c <= " " or c == "\x7f" for c in target):
            raise ProtocolError(f"a request target cannot hold spaces or control characters: {target!r}")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host_header}", "Accept-Encoding: identity"]
        lines += [f"{_checked(name)}: {_checked(value)}" for name, value in headers.items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        sock = self.sock or self._connect()
        self._method = method
        sock.sendall(head + body if body else head)

    def getresponse(self) -> Answer:
        """The answer to the request just sent (its status line and headers read)."""
        if self._file is None:
            raise ProtocolError("no request was sent on this connection")
        return Answer(self._file, self._method)

    def close(self) -> None:
        sock, file, self.sock, self._file = self.sock, self._file, None, None
        if file is not None:
            file.close()
        if sock is not None:
            sock.close()


def _open(host: str, port: int, timeout: float) -> _socket.socket:
    """socket.create_connection's plain TCP connection: each address of `host` in turn, the
    last one's error if none connects."""
    error: OSError | None = None
    for family, kind, proto, _, address in _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError(f"no address found for {host}")


class _Reader(io.RawIOBase):
    """A connected socket's reads, for io.BufferedReader (what socket.makefile('rb') does)."""

    def __init__(self, sock: _socket.socket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        return self._sock.recv_into(buffer)


def _checked(text: str) -> str:
    """A header's name or value, without the characters that would end it (or the head) early."""
    if "\r" in text or "\n" in text or "\0" in text:
        raise ValueError(f"invalid character in an HTTP request: {text!r}")
    return text


def _ascii_host(host: str) -> str:
    try:
        host.encode("ascii")
    except UnicodeEncodeError:
        return host.encode("idna").decode("ascii")
    return host
