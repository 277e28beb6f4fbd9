"""The test lab itself (tests/netlab.py): its hosts answer, its DNS zone resolves and logs."""

import urllib.request

from dnslib import DNSRecord
from netlab import NetLab


def test_lab_hosts_answer_and_dns_logs_queries(netlab: NetLab) -> None:
    assert urllib.request.urlopen(f"http://{netlab.allowed}/", timeout=5).read() == b"allowed.test\n"
    assert urllib.request.urlopen(f"http://{netlab.private}/", timeout=5).read() == b"private.test\n"
    r = DNSRecord.parse(DNSRecord.question("allowed.test").send(netlab.dns, 53, timeout=5))
    assert str(r.rr[0].rdata) == netlab.allowed
    assert "allowed.test" in netlab.queries()
