"""The keyed hashes of the chain are HMAC-SHA256 with the key derived from the audit key."""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from prefcenter.audit.canonical import FREE_TEXT_FIELDS
from prefcenter.audit.keys import AuditKeys
from tests.support.harness import make_settings

KEYS = AuditKeys.from_settings(make_settings("sqlite://"))


@given(st.binary(max_size=300))
def test_the_precomputed_hmac_is_hmac_sha256(message: bytes) -> None:
    assert KEYS.hmac_sha256(message) == hmac.digest(KEYS.hmac_key, message, "sha256")


def test_address_hashes_and_evidence_digests_are_hex_hmacs() -> None:
    assert KEYS.address_hash("ada@example.com") == (
        hmac.digest(KEYS.hmac_key, b"ada@example.com", "sha256").hex()
    )
    assert KEYS.evidence_digest(b"{}") == hmac.digest(KEYS.hmac_key, b"{}", "sha256").hex()


@given(st.lists(st.text(max_size=40), max_size=20))
def test_address_hashes_are_each_address_hash(addresses: list[str]) -> None:
    assert KEYS.address_hashes(addresses) == {KEYS.address_hash(a): a for a in addresses}


def test_free_text_digests_are_hex_hmacs_under_a_key_of_their_own() -> None:
    """One key per field, derived from the audit key, none of them the address key."""
    for name in FREE_TEXT_FIELDS:
        key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"prefcenter audit free text v1 " + name.encode(),
        ).derive(make_settings("sqlite://").audit_secret)
        assert key != KEYS.hmac_key
        assert KEYS.free_text_digest(name, "Ticket ✓") == (
            hmac.digest(key, "Ticket ✓".encode(), "sha256").hex()
        )
