"""Address validation and normalisation, without a database."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from prefcenter.contacts.addresses import (
    MAX_ADDRESS_OCTETS,
    InvalidAddress,
    _fast_normalise,
    normalise_address,
    parse_address,
)


class TestNormalisation:
    def test_case_is_ignored_for_matching_and_kept_for_display(self) -> None:
        address = parse_address("Ada.Lovelace@Example.COM")
        assert address.normalised == "ada.lovelace@example.com"
        assert address.given == "Ada.Lovelace@Example.COM"

    def test_idn_domain_has_one_form(self) -> None:
        assert normalise_address("ada@bücher.de") == normalise_address("ADA@XN--BCHER-KVA.DE")

    def test_unicode_is_nfc(self) -> None:
        decomposed = "A\u030angstr\u00f6m@example.org"  # A + combining ring
        composed = "\u00c5ngstr\u00f6m@example.org"
        assert normalise_address(decomposed) == normalise_address(composed)

    def test_plus_tags_are_distinct_addresses(self) -> None:
        assert normalise_address("ada+news@example.com") != normalise_address("ada@example.com")


class TestRejection:
    @pytest.mark.parametrize(
        "text",
        [
            "ada@example.com\r\nBcc: victim@example.org",
            "ada\n@example.com",
            "ada\x00@example.com",
            "ada\t@example.com",
            "ada@exa\x85mple.com",
            "ada\u2028@example.com",
        ],
    )
    def test_control_characters_are_refused(self, text: str) -> None:
        with pytest.raises(InvalidAddress, match="control character"):
            parse_address(text)

    @pytest.mark.parametrize(
        "text", ["", "ada", "@example.com", "ada@", "ada@@example.com", "a b@example.com"]
    )
    def test_not_an_address(self, text: str) -> None:
        with pytest.raises(InvalidAddress):
            parse_address(text)

    def test_wrongly_decoded_text_is_refused(self) -> None:
        with pytest.raises(InvalidAddress, match="U\\+FFFD"):
            parse_address("\ufffd\ufffd@example.com")

    def test_local_part_over_64_octets(self) -> None:
        with pytest.raises(InvalidAddress):
            parse_address("a" * 65 + "@example.com")

    def test_address_over_254_octets(self) -> None:
        text = "a" * 60 + "@" + ".".join(["b" * 60] * 4) + ".com"
        assert len(text) > MAX_ADDRESS_OCTETS
        with pytest.raises(InvalidAddress):
            parse_address(text)

    def test_longest_valid_local_part_is_accepted(self) -> None:
        assert parse_address("a" * 64 + "@example.com").normalised.startswith("a" * 64)


@given(st.text(max_size=300))
def test_any_text_is_an_address_or_a_clear_refusal(text: str) -> None:
    try:
        address = parse_address(text)
    except InvalidAddress as exc:
        refusal = str(exc)
        assert refusal, "a refusal must say why"
        return
    assert address.given == text
    assert len(address.normalised.encode()) <= MAX_ADDRESS_OCTETS
    assert address.normalised == normalise_address(address.normalised)
    assert not any(ch in address.normalised for ch in "\r\n\x00")


# The fast path must give exactly email-validator's answer wherever it answers at all.
_ATOM_CHARS = "abcXYZ019!#$%&'*+/=?^_`{|}~-."
_LABEL_CHARS = "abzAZ09-"
label = st.text(alphabet=_LABEL_CHARS, min_size=1, max_size=70)
address_like = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join([*labels, tld])}",
    st.text(alphabet=_ATOM_CHARS, min_size=1, max_size=70),
    st.lists(label, min_size=1, max_size=4),
    st.one_of(
        st.text(alphabet="abcdefzXY", min_size=1, max_size=8),
        st.sampled_from(["test", "local", "localhost", "onion", "arpa", "invalid", "com", "c0m"]),
    ),
)


@settings(max_examples=400)
@given(address_like)
def test_fast_path_agrees_with_email_validator(text: str) -> None:
    fast = _fast_normalise(text)
    if fast is None:
        return  # the fast path declined; the complete path answers
    try:
        valid = validate_email(text, check_deliverability=False, strict=True)
    except EmailNotValidError as exc:
        pytest.fail(f"fast path accepted {text!r}, email-validator refuses it: {exc}")
    assert fast == f"{valid.local_part.lower()}@{valid.domain.lower()}"


def test_fast_path_answers_the_common_case() -> None:
    assert _fast_normalise("Ada.Lovelace+news@Example.COM") == "ada.lovelace+news@example.com"
    assert _fast_normalise("ada@bücher.de") is None
    assert _fast_normalise("ada@xn--bcher-kva.de") is None
    assert _fast_normalise("ada@mail.test") is None
