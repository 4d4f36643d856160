"""The pure rules of webhooks, without a database: which addresses deliveries refuse, which
URLs, what `Retry-After` means, which audit events make which types; and that our signature
is the one the reference `standardwebhooks` package accepts."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from prefcenter.webhooks.rules import (
    EventType,
    UrlRefused,
    address_refusal,
    check_url,
    failing_too_long,
    new_secret,
    retry_after,
    secret_key,
    signature_header,
    types_of_event,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.0.1", "private"),
        ("fc00::1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "CGNAT"),
        ("100.127.255.254", "CGNAT"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "address"),
        ("255.255.255.255", "address"),
        ("198.18.0.1", "address"),
        ("169.254.169.254", "metadata"),
        ("169.254.170.2", "metadata"),
        ("168.63.129.16", "metadata"),
        ("100.100.100.200", "metadata"),
        ("192.0.0.192", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("2001:db8::1", "address"),  # documentation (private or reserved: refused either way)
    ],
)
def test_addresses_that_are_not_public_are_refused(address: str, why: str) -> None:
    refusal = address_refusal(ipaddress.ip_address(address))
    assert refusal is not None
    assert why.lower() in refusal.lower()


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


@given(st.ip_addresses(v=4))
def test_an_ipv4_address_is_refused_also_inside_ipv6(address: ipaddress.IPv4Address) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{address}")
    assert (address_refusal(mapped) is None) == (address_refusal(address) is None)


@pytest.mark.parametrize(
    "url",
    [
        "gopher://example.com/",
        "file:///etc/passwd",
        "https://u@example.com/",
        "https://u:p@example.com/",
        "https://example.com/#x",
        "https://example.com:0/",
        "https://example.com:99999/",
        "https://exa mple.com/",
        "https://example.com/\x00",
        "https://" + "a" * 2000 + ".com/",
        "//example.com/",
    ],
)
def test_urls_that_are_refused(url: str) -> None:
    with pytest.raises(UrlRefused):
        check_url(url)


def test_a_plain_https_url_is_accepted() -> None:
    assert check_url("https://hooks.example.com:8443/in?k=v").hostname == "hooks.example.com"


class TestRetryAfter:
    def test_seconds_and_dates_on_429_and_503_only(self) -> None:
        assert retry_after(503, "120", now=NOW) == NOW + timedelta(seconds=120)
        assert retry_after(
            429, format_datetime(NOW + timedelta(hours=1), usegmt=True), now=NOW
        ) == (NOW + timedelta(hours=1))
        assert retry_after(500, "120", now=NOW) is None
        assert retry_after(503, None, now=NOW) is None

    @pytest.mark.parametrize("value", ["", "soon", "-5", "0", "Tue, 01 Jan 2000 00:00:00 GMT"])
    def test_nonsense_or_the_past_is_ignored(self, value: str) -> None:
        assert retry_after(503, value, now=NOW) is None

    def test_at_most_a_day(self) -> None:
        assert retry_after(503, "999999999999", now=NOW) == NOW + timedelta(hours=24)


def test_types_of_audit_events() -> None:
    assert types_of_event("consent_change", outcome="applied", to_status="unsubscribed") == (
        EventType.CONSENT_CHANGED,
    )
    assert types_of_event("global_consent_change", outcome="applied", to_status="unsubscribed") == (
        EventType.CONSENT_CHANGED,
        EventType.CONTACT_SUPPRESSED,
    )
    assert types_of_event(
        "global_consent_change", outcome="unchanged", to_status="unsubscribed"
    ) == (EventType.CONSENT_CHANGED,)
    assert types_of_event("erasure", outcome="applied", to_status=None) == (
        EventType.CONTACT_ERASED,
    )
    assert types_of_event("mail_sent", outcome="sent", to_status=None) == ()


def test_five_days_of_failure() -> None:
    assert not failing_too_long(None, NOW)
    assert not failing_too_long(NOW - timedelta(days=4, hours=23), NOW)
    assert failing_too_long(NOW - timedelta(days=5), NOW)


@given(st.text(max_size=300), st.text(alphabet="abcdefghij0123456789_-.", min_size=1))
def test_the_reference_implementation_accepts_our_signatures(text: str, suffix: str) -> None:
    """Verified by `standardwebhooks`, not by our own code; with two secrets, each verifies."""
    body = text.encode()
    first, second = new_secret(), new_secret()
    webhook_id = "msg_" + suffix
    timestamp = int(datetime.now(UTC).timestamp())
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(
            [secret_key(first), secret_key(second)], webhook_id, timestamp, body
        ),
    }
    for secret in (first, second):
        Webhook(secret).verify(body, headers, json_parse=False)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers, json_parse=False)
