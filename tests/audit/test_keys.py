"""The keyed hashes of the chain are HMAC-SHA256 with the key derived from the audit key."""

from __future__ import annotations

import hmac

from hypothesis import given
from hypothesis import strategies as st

from prefcenter.audit.keys import AuditKeys
from tests.conftest import make_settings

KEYS = AuditKeys.from_settings(make_settings("sqlite://"))


@given(st.binary(max_size=300))
def test_the_precomputed_hmac_is_hmac_sha256(message: bytes) -> None:
    assert KEYS.hmac_sha256(message) == hmac.digest(KEYS.hmac_key, message, "sha256")


def test_address_hashes_and_evidence_digests_are_hex_hmacs() -> None:
    assert KEYS.address_hash("ada@example.com") == (
        hmac.digest(KEYS.hmac_key, b"ada@example.com", "sha256").hex()
    )
    assert KEYS.evidence_digest(b"{}") == hmac.digest(KEYS.hmac_key, b"{}", "sha256").hex()
