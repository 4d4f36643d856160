"""Which client address gets recorded: X-Forwarded-For only counts from trusted proxies."""

from __future__ import annotations

from prefcenter.audit.context import client_address, parse_trusted_proxies

PROXIES = parse_trusted_proxies("10.0.0.0/8, 192.168.1.1")


def test_without_trusted_proxies_the_peer_is_recorded() -> None:
    assert client_address("203.0.113.9", "198.51.100.1", ()) == "203.0.113.9"


def test_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    assert client_address("203.0.113.9", "198.51.100.1", PROXIES) == "203.0.113.9"


def test_forwarded_for_from_a_trusted_proxy_is_believed() -> None:
    assert client_address("10.1.2.3", "198.51.100.1", PROXIES) == "198.51.100.1"


def test_forged_left_part_is_skipped() -> None:
    forwarded = "1.1.1.1, 198.51.100.7, 192.168.1.1"
    assert client_address("10.1.2.3", forwarded, PROXIES) == "198.51.100.7"


def test_garbage_from_a_trusted_proxy_is_not_recorded_as_an_address() -> None:
    assert client_address("10.1.2.3", "not-an-ip", PROXIES) == "10.1.2.3"


def test_ipv6_is_normalised() -> None:
    assert client_address("10.1.2.3", "2001:DB8::0001", PROXIES) == "2001:db8::1"
