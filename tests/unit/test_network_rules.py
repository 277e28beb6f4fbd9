"""corral/network_rules.py: what a rule means, and the message a bad one gets."""

from __future__ import annotations

import pytest

from corral import errors
from corral.network_rules import NetworkRules, rules_from_json


def test_default_rules_reach_public_addresses_only() -> None:
    rules = NetworkRules()
    assert not rules.restricted
    assert rules.name_allowed("pypi.org")
    assert rules.address_allowed("203.0.113.10")
    for never in ("127.0.0.1", "169.254.169.254", "::1", "fe80::1", "::ffff:127.0.0.1", "224.0.0.1", "0.0.0.0"):
        assert not rules.address_allowed(never), never
    for private in ("10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "fd12::1"):
        assert not rules.address_allowed(private), private


def test_allow_rules_narrow_and_deny_rules_win() -> None:
    rules = NetworkRules.parse(
        ["pypi.org", "*.npmjs.org", "203.0.113.0/24", "10.213.0.0/24"], ["bad.npmjs.org", "203.0.113.66"]
    )
    assert rules.restricted
    assert rules.name_allowed("PyPI.org.") and rules.name_allowed("registry.npmjs.org")
    assert not rules.name_allowed("npmjs.org")  # a wildcard names what is below it only
    assert not rules.name_allowed("bad.npmjs.org") and not rules.name_allowed("example.com")
    assert rules.address_allowed("203.0.113.5") and not rules.address_allowed("203.0.113.66")
    assert rules.address_allowed("10.213.0.10")  # a private range opened by a rule inside it
    assert not rules.address_allowed("10.2.0.1")
    assert not rules.address_allowed("198.51.100.1")
    assert rules.address_allowed("198.51.100.1", resolved_for_allowed_name=True)
    assert not rules.address_allowed("192.168.0.1", resolved_for_allowed_name=True)  # rebinding
    assert NetworkRules.from_proto(rules.to_proto()) == rules


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("169.254.169.254", "never reachable"),
        ("127.0.0.0/8", "never reachable"),
        ("10.0.0.1/8", "host bits set (did you mean 10.0.0.0/8?)"),
        ("300.1.1.1", "not a valid address"),
        ("*.com", "too broad a wildcard"),
        ("a..b", "neither an address"),
        ("foo bar", "neither an address"),
        ("", "non-empty string"),
    ],
)
def test_bad_rules_are_refused_by_name(rule: str, message: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        NetworkRules.parse([rule])
    assert "network.allow[0]" in str(caught.value) and message in str(caught.value)


def test_json_forms() -> None:
    assert rules_from_json(False) == (False, NetworkRules())
    assert rules_from_json(True) == (True, NetworkRules())
    enabled, rules = rules_from_json({"allow": ["pypi.org"]})
    assert enabled and rules.allow == ["pypi.org"]
    with pytest.raises(errors.InvalidArgument, match="unknown key"):
        rules_from_json({"allow": [], "permit": []})
    with pytest.raises(errors.InvalidArgument, match="at most 256"):
        NetworkRules.parse([f"h{n}.example.com" for n in range(257)])
