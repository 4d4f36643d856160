"""Signed tokens, without a database: round trip, tampering, purpose, key ring, expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefcenter.settings import SigningKey, parse_signing_keys
from prefcenter.tokens import (
    LEGACY_VERSION,
    MAX_TOKEN_LENGTH,
    BadSignature,
    ExpiredToken,
    MalformedToken,
    RetiredKey,
    TokenClaims,
    TokenError,
    TokenPurpose,
    UnknownKey,
    _b64encode,
    _tag,
    sign_token,
    verify_token,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
RING = parse_signing_keys("k2:" + "n" * 32 + ",k1:" + "o" * 32)
CLAIMS = TokenClaims(
    contact_id="AbCdEfGhIjKlMnOp", topic="newsletter", campaign_id="spring", issued_at=NOW
)


def manage_token(claims: TokenClaims = CLAIMS) -> str:
    return sign_token(RING, TokenPurpose.MANAGE, claims)


class TestRoundTrip:
    def test_claims_survive(self) -> None:
        verified = verify_token(RING, TokenPurpose.MANAGE, manage_token(), now=NOW)
        assert verified.claims == CLAIMS
        assert verified.kid == "k2"

    def test_no_address_and_no_row_id_in_the_token(self) -> None:
        token = manage_token()
        assert "@" not in token
        assert token.count(".") == 3
        assert token.startswith("2.k2.")

    def test_token_for_all_topics(self) -> None:
        claims = TokenClaims(contact_id="x" * 16, topic=None, campaign_id=None, issued_at=NOW)
        assert verify_token(RING, TokenPurpose.MANAGE, manage_token(claims), now=NOW).claims == (
            claims
        )

    def test_old_key_still_verifies_after_rotation(self) -> None:
        old_ring = parse_signing_keys("k1:" + "o" * 32)
        token = sign_token(old_ring, TokenPurpose.MANAGE, CLAIMS)
        assert verify_token(RING, TokenPurpose.MANAGE, token, now=NOW).kid == "k1"

    def test_retired_key_no_longer_verifies(self) -> None:
        token = manage_token()
        with pytest.raises(UnknownKey):
            verify_token(parse_signing_keys("k1:" + "o" * 32), TokenPurpose.MANAGE, token, now=NOW)

    def test_a_key_listed_as_retired_says_so(self) -> None:
        token = manage_token()
        kid = token.split(".")[1]
        other_ring = parse_signing_keys("k1:" + "o" * 32)
        with pytest.raises(RetiredKey):
            verify_token(other_ring, TokenPurpose.MANAGE, token, now=NOW, retired=frozenset({kid}))
        with pytest.raises(UnknownKey) as refused:
            verify_token(other_ring, TokenPurpose.MANAGE, token, now=NOW, retired=frozenset({"x"}))
        assert not isinstance(refused.value, RetiredKey)

    def test_manage_tokens_do_not_expire(self) -> None:
        years_later = NOW + timedelta(days=3650)
        assert verify_token(RING, TokenPurpose.MANAGE, manage_token(), now=years_later)


def legacy_manage_token(claims: TokenClaims = CLAIMS, ring: tuple[SigningKey, ...] = RING) -> str:
    """A version-1 token as issued before purposes were split: one MANAGE token behind both the
    unsubscribe and the preference link (built here: the service no longer makes them)."""
    payload = sign_token(ring, TokenPurpose.MANAGE, claims).split(".")[2]
    signed_part = f"{LEGACY_VERSION}.{ring[0].kid}.{payload}"
    return f"{signed_part}.{_b64encode(_tag(ring[0], TokenPurpose.MANAGE, signed_part))}"


class TestPurposes:
    @pytest.mark.parametrize("signed", list(TokenPurpose))
    @pytest.mark.parametrize("asked", list(TokenPurpose))
    def test_a_token_works_only_for_its_own_purpose(
        self, signed: TokenPurpose, asked: TokenPurpose
    ) -> None:
        token = sign_token(RING, signed, CLAIMS)
        if signed is asked:
            assert verify_token(RING, asked, token, now=NOW).claims == CLAIMS
        else:
            with pytest.raises(BadSignature):
                verify_token(RING, asked, token, now=NOW)

    def test_a_mailed_version_1_link_still_unsubscribes_and_opens_preferences(self) -> None:
        token = legacy_manage_token()
        assert token.startswith("1.k2.")
        for purpose in (TokenPurpose.UNSUBSCRIBE, TokenPurpose.MANAGE):
            assert verify_token(RING, purpose, token, now=NOW).claims == CLAIMS
        with pytest.raises(BadSignature):
            verify_token(RING, TokenPurpose.CONFIRM, token, now=NOW)

    def test_a_version_2_manage_token_relabelled_version_1_is_refused(self) -> None:
        """The version is inside the MAC: a preference token cannot pass for a legacy link."""
        token = sign_token(RING, TokenPurpose.MANAGE, CLAIMS)
        relabelled = "1" + token[1:]
        with pytest.raises(BadSignature):
            verify_token(RING, TokenPurpose.UNSUBSCRIBE, relabelled, now=NOW)
        with pytest.raises(BadSignature):
            verify_token(RING, TokenPurpose.MANAGE, relabelled, now=NOW)

    def test_an_unknown_version_is_refused(self) -> None:
        token = sign_token(RING, TokenPurpose.MANAGE, CLAIMS)
        with pytest.raises(MalformedToken):
            verify_token(RING, TokenPurpose.MANAGE, "3" + token[1:], now=NOW)


class TestRefusals:
    def test_wrong_purpose_is_refused(self) -> None:
        with pytest.raises(BadSignature):
            verify_token(RING, TokenPurpose.CONFIRM, manage_token(), now=NOW)

    def test_every_single_character_change_is_refused(self) -> None:
        token = manage_token()
        for index, char in enumerate(token):
            for bit in range(7):
                flipped = chr(ord(char) ^ (1 << bit))
                tampered = token[:index] + flipped + token[index + 1 :]
                with pytest.raises(TokenError):
                    verify_token(RING, TokenPurpose.MANAGE, tampered, now=NOW)

    def test_truncated_tokens_are_refused(self) -> None:
        token = manage_token()
        for length in range(len(token)):
            with pytest.raises(TokenError):
                verify_token(RING, TokenPurpose.MANAGE, token[:length], now=NOW)

    def test_key_of_another_installation_is_refused(self) -> None:
        foreign = sign_token(parse_signing_keys("k2:" + "f" * 32), TokenPurpose.MANAGE, CLAIMS)
        with pytest.raises(BadSignature):
            verify_token(RING, TokenPurpose.MANAGE, foreign, now=NOW)

    def test_overlong_token_is_refused_before_decoding(self) -> None:
        with pytest.raises(MalformedToken):
            verify_token(RING, TokenPurpose.MANAGE, "1.k2." + "A" * MAX_TOKEN_LENGTH, now=NOW)

    def test_confirm_token_expires(self) -> None:
        token = sign_token(RING, TokenPurpose.CONFIRM, CLAIMS)
        week = timedelta(days=7)
        assert verify_token(RING, TokenPurpose.CONFIRM, token, now=NOW + week, max_age=week)
        with pytest.raises(ExpiredToken):
            verify_token(
                RING,
                TokenPurpose.CONFIRM,
                token,
                now=NOW + week + timedelta(seconds=1),
                max_age=week,
            )


@given(st.text(max_size=2000))
def test_arbitrary_text_is_refused_with_a_token_error(text: str) -> None:
    with pytest.raises(TokenError):
        verify_token(RING, TokenPurpose.MANAGE, text, now=NOW)


@given(
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.", max_size=300
    )
)
def test_token_shaped_text_is_refused_with_a_token_error(text: str) -> None:
    with pytest.raises(TokenError):
        verify_token(RING, TokenPurpose.MANAGE, "1.k2." + text, now=NOW)
