"""The docker sandbox network's nftables scripts (services/executor/network/docker_net.py); the
rules themselves are exercised from real containers in tests/integration/executor/test_network_docker.py."""

from __future__ import annotations

import ipaddress

from corral.network_rules import NetworkRules
from services.executor.network import docker_net, nft

T = "corral_docker"


def listing(*items: dict[str, object]) -> dict[str, object]:
    return {"nftables": [{"metainfo": {"version": "1.0.6"}}, *items]}


def test_removal_takes_only_the_prefix_and_its_map_entries() -> None:
    table = listing(
        {"map": {"name": docker_net.SANDBOXES, "elem": [
            ["10.231.0.2", {"jump": {"target": "xaaaa_1_egress"}}],
            ["10.231.0.3", {"jump": {"target": "xbbbb_1_egress"}}],
        ]}},
        {"map": {"name": docker_net.DNS_PORTS, "elem": [["10.231.0.2", 40001], ["10.231.0.3", 40002]]}},
        {"chain": {"name": "xaaaa_1_refuse"}},
        {"chain": {"name": "xaaaa_1_egress"}},
        {"chain": {"name": "xbbbb_1_egress"}},
        {"chain": {"name": "forward"}},
        {"set": {"name": "xaaaa_1_denied_v4"}},
        {"set": {"name": "xbbbb_1_denied_v4"}},
        {"counter": {"name": "xaaaa_1_refused"}},
    )
    lines = docker_net.removal_script(T, table, "xaaaa_").splitlines()
    assert lines[:2] == [
        f"delete element inet {T} sandboxes {{ 10.231.0.2 }}",
        f"delete element inet {T} dns_ports {{ 10.231.0.2 }}",
    ]
    # The egress chain (which jumps to the refusal chain) is deleted first.
    deleted = [line for line in lines if line.startswith("delete chain")]
    assert deleted == [f"delete chain inet {T} xaaaa_1_egress", f"delete chain inet {T} xaaaa_1_refuse"]
    assert not [line for line in lines if "xbbbb" in line or "10.231.0.3" in line or "forward" in line]
    assert docker_net.removal_script(T, table, "xcccc_") == ""


def test_a_sandbox_script_maps_its_address_to_its_chain_and_resolver() -> None:
    names = nft.SetNames(prefix="xaaaa_7_")
    net = ipaddress.ip_network("10.231.0.0/16")
    script = docker_net.sandbox_script(T, names, NetworkRules.parse(allow=["pypi.org"]), [net], ipaddress.ip_address("10.231.0.9"), 40001)
    assert "add element inet corral_docker sandboxes { 10.231.0.9 : jump xaaaa_7_egress }" in script
    assert "add element inet corral_docker dns_ports { 10.231.0.9 : 40001 }" in script
    # The sandbox subnet is refused (other sandboxes), whatever an allow rule says.
    assert "10.231.0.0/16" in script.split("set xaaaa_7_denied_v4")[1].split("}")[0]
