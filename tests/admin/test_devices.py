"""The device cookie: only what the server signed, unchanged, with a key still in the ring and
not too old, stands for a device."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefcenter.admin.devices import (
    DEVICE_MAX_AGE,
    Device,
    device_cookie,
    new_device,
    read_device_cookie,
)
from prefcenter.settings import parse_signing_keys
from prefcenter.tokens import TokenClaims, TokenPurpose, sign_token

RING = parse_signing_keys(
    "k2:second-signing-secret-0123456789abcdef,k1:first-signing-secret-0123456789abcdefg"
)
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
DEVICE = Device(username="desk", device_id="AAAAAAAAAAAAAAAAAAAAAA")


def test_a_cookie_the_server_issued_reads_back() -> None:
    device = new_device("desk.ada")

    assert read_device_cookie(RING, device_cookie(RING, device, now=NOW), now=NOW) == device


def test_device_ids_are_random() -> None:
    assert new_device("desk").device_id != new_device("desk").device_id


def test_a_key_still_in_the_ring_verifies_after_rotation() -> None:
    older_ring = RING[1:]  # k1 signed before k2 was put first
    cookie = device_cookie(older_ring, DEVICE, now=NOW)

    assert read_device_cookie(RING, cookie, now=NOW) == DEVICE


def test_a_key_taken_out_of_the_ring_no_longer_does() -> None:
    cookie = device_cookie(RING, DEVICE, now=NOW)  # signed with k2

    assert read_device_cookie(RING[1:], cookie, now=NOW) is None


@pytest.mark.parametrize("field", range(5))
def test_any_changed_field_is_refused(field: int) -> None:
    parts = device_cookie(RING, DEVICE, now=NOW).split(":")
    replacements = [
        "k1",
        "BBBBBBBBBBBBBBBBBBBBBB",
        str(int(NOW.timestamp()) - 1),
        "admin",
        "x" * 43,
    ]
    parts[field] = replacements[field]

    assert read_device_cookie(RING, ":".join(parts), now=NOW) is None


def test_another_users_cookie_cannot_be_relabelled() -> None:
    cookie = device_cookie(RING, DEVICE, now=NOW)

    assert read_device_cookie(RING, cookie.replace(":desk:", ":root:"), now=NOW) is None


def test_a_tag_made_with_the_signing_key_itself_is_refused() -> None:
    """The cookie's key is derived for this purpose: the raw signing key (what link tokens
    use) makes no valid cookie."""
    key = RING[0]
    signed_part = f"{key.kid}:{DEVICE.device_id}:{int(NOW.timestamp())}:{DEVICE.username}"
    raw = hmac.new(key.secret, signed_part.encode(), hashlib.sha256).digest()
    forged = f"{signed_part}:{base64.urlsafe_b64encode(raw).rstrip(b'=').decode()}"

    assert read_device_cookie(RING, forged, now=NOW) is None


def test_a_link_token_is_no_device_cookie() -> None:
    token = sign_token(
        RING, TokenPurpose.MANAGE, TokenClaims("c1", topic=None, campaign_id=None, issued_at=NOW)
    )

    assert read_device_cookie(RING, token, now=NOW) is None


def test_an_old_cookie_is_no_longer_believed() -> None:
    cookie = device_cookie(RING, DEVICE, now=NOW)

    assert read_device_cookie(RING, cookie, now=NOW + DEVICE_MAX_AGE - timedelta(1)) == DEVICE
    assert read_device_cookie(RING, cookie, now=NOW + DEVICE_MAX_AGE) is None


def test_a_cookie_from_the_future_is_refused() -> None:
    cookie = device_cookie(RING, DEVICE, now=NOW + timedelta(hours=1))

    assert read_device_cookie(RING, cookie, now=NOW) is None


@given(value=st.one_of(st.none(), st.text(max_size=300)))
def test_made_up_values_never_pass_nor_raise(value: str | None) -> None:
    assert read_device_cookie(RING, value, now=NOW) is None
