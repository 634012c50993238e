"""The ICE candidate address policy (salon.media.ice_policy): defaults, configured networks,
names, ports."""

from __future__ import annotations

import pytest

from salon.media.ice_policy import IcePolicy, parse_networks

PUBLIC = IcePolicy.for_listen_addresses(["203.0.113.5"])
"""A server on a public address: loopback refused too."""
LOCAL = IcePolicy.for_listen_addresses(["127.0.0.1"])
"""A development server on loopback: its clients are local."""


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("169.254.169.254", "link-local"),  # cloud metadata services
        ("169.254.0.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),  # SSDP
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("::ffff:169.254.169.254", "link-local"),  # IPv4-mapped: judged as IPv4
        ("::ffff:127.0.0.1", "loopback"),
        ("127.0.0.1", "loopback"),
        ("127.1.2.3", "loopback"),
        ("::1", "loopback"),
    ],
)
def test_refused_by_default_on_a_public_server(host: str, why: str) -> None:
    refusal = PUBLIC.refusal(host, 5000)
    assert refusal is not None and why in refusal, refusal


@pytest.mark.parametrize("host", ["8.8.8.8", "198.51.100.7", "192.168.1.20", "10.0.0.3", "2001:db8::1"])
def test_ordinary_addresses_are_allowed(host: str) -> None:
    assert PUBLIC.refusal(host, 5000) is None
    assert PUBLIC.allows(host, 5000)


def test_loopback_is_allowed_only_when_the_server_listens_on_loopback() -> None:
    assert LOCAL.allows("127.0.0.1", 5000) and LOCAL.allows("127.0.0.2", 5000) and LOCAL.allows("::1", 9)
    assert not PUBLIC.allows("127.0.0.1", 5000)
    assert IcePolicy.for_listen_addresses(["::1"]).allows("127.0.0.1", 5000)
    # The other defaults still hold on a loopback server.
    assert not LOCAL.allows("169.254.169.254", 80) and not LOCAL.allows("255.255.255.255", 9)


def test_names_are_refused() -> None:
    mdns = PUBLIC.refusal("0b1c7a3e-1c52-4f8e-9f0a-4d0bd9a4a5a4.local", 5000)
    assert mdns is not None and "mDNS" in mdns
    assert "not an IP address" in (PUBLIC.refusal("example.com", 5000) or "")
    assert PUBLIC.refusal("", 5000) is not None


@pytest.mark.parametrize("port", [0, -1, 65536, 100000])
def test_ports_out_of_range_are_refused(port: int) -> None:
    assert "port" in (PUBLIC.refusal("8.8.8.8", port) or "")


def test_allow_overrides_the_defaults_and_deny_adds_to_them() -> None:
    policy = IcePolicy.for_listen_addresses(
        ["203.0.113.5"], allow=["169.254.10.0/24", "127.0.0.1"], deny=["10.0.0.0/8", "2001:db8::/32"]
    )
    assert policy.allows("169.254.10.7", 5000) and policy.allows("127.0.0.1", 5000)
    assert not policy.allows("169.254.169.254", 80)  # outside the allowed /24
    assert not policy.allows("127.0.0.2", 5000)
    assert "10.0.0.0/8" in (policy.refusal("10.1.2.3", 5000) or "")
    assert not policy.allows("2001:db8::1", 5000) and policy.allows("2001:db9::1", 5000)


def test_the_most_specific_network_decides_and_deny_wins_a_tie() -> None:
    policy = IcePolicy(allow=("10.1.0.0/16",), deny=("10.0.0.0/8", "10.1.2.0/24"))
    assert policy.allows("10.1.3.4", 5000)  # /16 allow beats /8 deny
    assert not policy.allows("10.1.2.4", 5000)  # /24 deny beats /16 allow
    assert not policy.allows("10.2.0.1", 5000)
    tie = IcePolicy(allow=("192.0.2.0/24",), deny=("192.0.2.0/24",))
    assert not tie.allows("192.0.2.1", 5000)
    # A loopback server configured to refuse one loopback address.
    local = IcePolicy.for_listen_addresses(["127.0.0.1"], deny=["127.0.0.2"])
    assert local.allows("127.0.0.1", 5000) and not local.allows("127.0.0.2", 5000)


def test_bad_networks_are_refused_by_name() -> None:
    assert [str(n) for n in parse_networks(["10.0.0.1/8", " ::1 "])] == ["10.0.0.0/8", "::1/128"]
    with pytest.raises(ValueError, match="'nope'"):
        parse_networks(["nope"])
    with pytest.raises(ValueError, match=r"10\.0\.0\.0/33"):
        IcePolicy(deny=("10.0.0.0/33",))
