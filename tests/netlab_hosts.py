"""The test lab's hosts: run inside the lab's network namespace by tests/netlab.py.

Serves, on port 80 of each of the lab's web addresses, an HTTP answer naming that host, and on
198.18.0.53:53 (UDP and TCP) a DNS zone for `test.`. Every query it receives is appended to
the log file given as its argument (one name per line), so a test can tell that a name the
sandbox's resolver refused was never forwarded.

    python tests/netlab_hosts.py QUERY_LOG
"""

from __future__ import annotations

import http.server
import socketserver
import sys
import threading
from pathlib import Path

from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

DNS_ADDRESS = "198.18.0.53"
# name -> address; every web address serves HTTP.
ZONE = {
    "allowed.test": "198.18.0.10",
    "www.allowed.test": "198.18.0.10",
    "denied.test": "198.18.0.20",
    "other.test": "198.19.0.10",
    "private.test": "10.213.0.10",
    "private-name.test": "10.213.0.10",
    "rebind.test": "127.0.0.1",
    "metadata.test": "169.254.169.254",
}
WEB = {"198.18.0.10": "allowed.test", "198.18.0.20": "denied.test",
       "198.19.0.10": "other.test", "10.213.0.10": "private.test"}


class ZoneResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, log: Path) -> None:
        self.log = log
        self.lock = threading.Lock()

    def resolve(self, request, handler):  # type: ignore[no-untyped-def]
        name = str(request.q.qname).rstrip(".").lower()
        with self.lock, self.log.open("a") as f:
            f.write(name + "\n")
        reply = request.reply()
        address = ZONE.get(name)
        if address is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype in (QTYPE.A, QTYPE.ANY):
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=60))
        return reply


def web_server(address: str, name: str) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"{name}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def server_bind(self) -> None:
            # HTTPServer's own server_bind looks up its name (getfqdn): a DNS query out.
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = name, 80

    return Server((address, 80), Handler)


def main() -> None:
    log = Path(sys.argv[1])
    resolver = ZoneResolver(log)
    for tcp in (False, True):
        quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data")
        DNSServer(resolver, address=DNS_ADDRESS, port=53, tcp=tcp, logger=quiet).start_thread()
    servers = [web_server(address, name) for address, name in WEB.items()]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
