"""The blocking SDK's own HTTP/1.1 (corral/sdk/_http11.py, used by _wire.py) against a real
socket server that answers exactly as scripted: the framings the gateway uses (Content-Length,
chunked event streams, read to close), kept-alive reuse and its stale case, and answers that
are not HTTP (each a typed error naming it, never a traceback)."""

from __future__ import annotations

import concurrent.futures
import http.server
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from corral import errors, pki
from corral.sdk._http import Call, Connection
from corral.sdk._wire import Wire

pytestmark = pytest.mark.timeout(20)


class ScriptedServer:
    """Accepts connections on 127.0.0.1; on each, reads requests and sends the next scripted
    answers for that connection (None: close it without answering). Records the requests."""

    def __init__(self, answers_per_connection: list[list[bytes | None]], tls: ssl.SSLContext | None = None) -> None:
        self.script = answers_per_connection
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.tls = tls
        port = self.listener.getsockname()[1]
        self.url = f"https://localhost:{port}" if tls else f"http://127.0.0.1:{port}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for answers in self.script:
            conn, _ = self.listener.accept()
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except OSError:
                    conn.close()  # the client refused the certificate
                    continue
            with conn, conn.makefile("rb") as reader:
                for answer in answers:
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = reader.readline()
                        if not line:
                            return
                        head += line
                    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), 0)
                    self.requests.append(head + reader.read(length))
                    if answer is None:
                        break
                    conn.sendall(answer)

    def close(self) -> None:
        if self.thread.is_alive():  # still waiting for a connection: one that says nothing ends it
            socket.create_connection(self.listener.getsockname()).close()
        self.thread.join(5)
        self.listener.close()


@contextmanager
def wire_to(
    *answers_per_connection: list[bytes | None], api_key: str | None = None, tls: ssl.SSLContext | None = None
) -> Iterator[tuple[Wire, ScriptedServer]]:
    server = ScriptedServer(list(answers_per_connection), tls)
    wire = Wire(Connection(server.url, api_key), timeout=5)
    try:
        yield wire, server
    finally:
        wire.close()
        server.close()


def ok(body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def test_answers_with_a_length_share_one_kept_alive_connection() -> None:
    with wire_to([ok(b'{"task_id": "t-1"}', "X-Twice: a", "x-twice: b"), ok(b"[]")], api_key="crl_k") as (wire, server):
        first = wire.request(Call("POST", "/v1/tasks", json={"steps": []}))
        second = wire.request(Call("GET", "/v1/tasks", params={"state": "running", "page_token": None}))
    assert first.json() == {"task_id": "t-1"} and second.json() == []
    assert first.headers["x-twice"] == "a, b" and first.headers.get("CONTENT-TYPE") == "application/json"
    post, get = server.requests
    assert post.startswith(b"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nAuthorization: Bearer crl_k\r\n" in post and b"\r\nContent-Length: 13\r\n" in post
    assert post.endswith(b'\r\n\r\n{"steps": []}')
    assert get.startswith(b"GET /v1/tasks?state=running HTTP/1.1\r\n") and b"Content-Length" not in get


def test_a_chunked_event_stream_is_read_line_by_line() -> None:
    # Lines split across chunks, a chunk extension, and trailers after the last chunk.
    chunks = [b"event: output\r\nda", b"ta: {\"n\": 1}\r\n\r\n", b"event: finished\r\ndata: {}\r\n\r\n"]
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\nX-Trailer: t\r\n\r\n"
    stream = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    with wire_to([stream]) as (wire, _), wire.stream(Call("GET", "/v1/tasks/t-1/events")) as lines:
        got = list(lines)
    assert got == ["event: output", 'data: {"n": 1}', "", "event: finished", "data: {}", ""]


def test_an_answer_without_a_length_is_read_to_the_close_and_1xx_answers_are_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nall of it"
    with wire_to([answer], [ok(b"again")]) as (wire, server):
        assert wire.request(Call("GET", "/a")).content == b"all of it"
        assert wire.request(Call("GET", "/b")).content == b"again"  # on a new connection
    assert len(server.requests) == 2


def test_a_kept_alive_connection_closed_meanwhile_is_replaced_once() -> None:
    # The first connection answers once then closes when asked again; the request goes on a new one.
    with wire_to([ok(b"1"), None], [ok(b"2")]) as (wire, server):
        assert wire.request(Call("GET", "/one")).content == b"1"
        assert wire.request(Call("GET", "/two")).content == b"2"
    assert [r.split(b" ")[1] for r in server.requests] == [b"/one", b"/two", b"/two"]


def test_each_address_of_the_host_is_tried_in_turn() -> None:
    # A name to resolve: where localhost is ::1 too, that address refuses (the server is on 127.0.0.1).
    with wire_to([ok(b"here")]) as (wire, _):
        port = int(wire.connection.url.rsplit(":", 1)[1])
        other = Wire(Connection(f"http://localhost:{port}", None), timeout=5)
        try:
            assert other.request(Call("GET", "/")).content == b"here"
        finally:
            other.close()
    with pytest.raises(errors.Unavailable, match="Connection refused"):
        Wire(Connection(f"http://localhost:{port}", None), timeout=5).request(Call("GET", "/"))


def test_a_failed_answer_raises_its_typed_error() -> None:
    body = b'{"error": {"code": "not_found", "message": "no task t-9"}}'
    with wire_to([b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)]) as (wire, _):
        with pytest.raises(errors.NotFound, match="no task t-9"):
            wire.request(Call("GET", "/v1/tasks/t-9"))


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n", "not an HTTP status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "ended 5 bytes before its body did"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size line"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", "more than 100 headers"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000 + b"\r\n\r\n", "line is too long"),
        (None, "closed connection without response"),
    ],
)
def test_what_is_not_http_is_an_unavailable_gateway_named(answer: bytes | None, words: str) -> None:
    with wire_to([answer]) as (wire, _), pytest.raises(errors.Unavailable, match=words) as raised:
        wire.request(Call("GET", "/v1/tasks"))
    assert "cannot reach Corral at http://127.0.0.1:" in str(raised.value)


def test_a_header_that_would_end_the_request_early_is_refused_before_sending() -> None:
    with wire_to([ok(b"")], api_key="crl_k\r\nX-Injected: 1") as (wire, server):
        with pytest.raises(ValueError, match="invalid character"):
            wire.request(Call("GET", "/v1/tasks"))
    assert server.requests == []


@pytest.fixture(scope="module")
def tls_server_context(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A server context with a certificate for localhost from a CA of its own; the CA's file."""
    directory = tmp_path_factory.mktemp("pki")
    pki.create_ca(directory).issue_into(directory, "gateway", "gateway", ["localhost"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert_path(directory, "gateway"), pki.key_path(directory, "gateway"))
    return context, directory / pki.CA_CERT


def test_https_verifies_the_gateways_certificate(
    tls_server_context: tuple[ssl.SSLContext, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    context, ca_file = tls_server_context
    # Without the CA, the system's CAs refuse the certificate: the gateway is not reached.
    with wire_to([ok(b"never")], tls=context) as (wire, server), pytest.raises(errors.Unavailable, match="CERTIFICATE"):
        wire.request(Call("GET", "/v1/tasks"))
    assert server.requests == []
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    with wire_to([ok(b'{"tasks": []}'), ok(b"{}")], tls=context) as (wire, server):
        assert wire.request(Call("GET", "/v1/tasks")).json() == {"tasks": []}
        assert wire.request(Call("GET", "/v1/tasks/t-1")).json() == {}
    assert server.requests[0].startswith(b"GET /v1/tasks HTTP/1.1\r\nHost: localhost:")


def test_every_idle_connection_the_gateway_closed_is_left_for_a_new_one() -> None:
    """Several kept-alive connections idle past the gateway's keep-alive (bench/density.py's
    parallel deletes after a long measurement): the retry must not take another stale one."""

    class Slow(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 0.3  # the server's keep-alive: an idle connection is closed after it

        def do_GET(self) -> None:
            time.sleep(0.2)  # so that two requests at once need two connections
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    wire = Wire(Connection(f"http://127.0.0.1:{server.server_address[1]}", None), timeout=5)
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: wire.request(Call("GET", "/")).content, range(3)))
        assert answers == [b"ok"] * 3 and len(wire._idle) >= 2
        time.sleep(1.0)  # every idle connection is closed by the server now
        assert wire.request(Call("GET", "/")).content == b"ok"
    finally:
        wire.close()
        server.shutdown()
        server.server_close()
