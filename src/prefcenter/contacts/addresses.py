"""Owns what an email address is here: validation, the one normalised form used for matching,
and the form it was given in (kept for display)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Annotated, Any

from email_validator import EmailNotValidError, validate_email
from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

# RFC 5321 §4.5.3.1: a path is at most 256 octets including the angle brackets.
MAX_ADDRESS_OCTETS = 254


class InvalidAddress(ValueError):
    """The text is not a mailbox we can send to; the message says why, for the caller."""


@dataclass(frozen=True, slots=True)
class Address:
    """A valid mailbox: `normalised` is what matching uses, `given` is what the caller sent."""

    normalised: str
    given: str

    def __str__(self) -> str:
        return self.given


def _has_control_character(text: str) -> bool:
    # Cc covers NUL, CR, LF, TAB and the C1 range; line/paragraph separators would also break
    # a mail header.
    return any(unicodedata.category(ch) == "Cc" or ch in "\u2028\u2029\u0085" for ch in text)


# The common case, answered without email-validator (which costs ~50 µs an address): plain
# ASCII dot-atom local part, LDH domain labels, an alphabetic TLD. Anything else, including
# every IDNA (`xn--`) label and special-use domain, goes the slow, complete way. A property
# test holds this to giving exactly email-validator's answer for everything it accepts.
_FAST_ADDRESS = re.compile(
    r"[a-z0-9!#$%&'*+/=?^_`{|}~-]{1,64}(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}",
    re.ASCII,
)
_SPECIAL_USE_TLDS = frozenset({"arpa", "invalid", "local", "localhost", "onion", "test"})


def _fast_normalise(text: str) -> str | None:
    """The normalised form if the fast path can vouch for it, else None (ask the slow path)."""
    if not text.isascii() or len(text) > MAX_ADDRESS_OCTETS:
        return None
    lowered = text.lower()
    if not _FAST_ADDRESS.fullmatch(lowered):
        return None
    local, _, domain = lowered.rpartition("@")
    if len(local) > 64 or "--" in domain or domain.rpartition(".")[2] in _SPECIAL_USE_TLDS:
        return None
    return lowered


def parse_address(text: str) -> Address:
    """Validate (strictly, RFC 5321 length limits included) and normalise: the domain
    IDNA-checked and lower-cased to its Unicode form, the whole address NFC, and the local part
    lower-cased so that matching ignores case.

    Control characters are refused before anything else: they would inject into mail headers.
    """
    fast = _fast_normalise(text)
    if fast is not None:
        return Address(normalised=fast, given=text)
    if _has_control_character(text):
        raise InvalidAddress("contains a control character (such as CR, LF, TAB or NUL)")
    if "\ufffd" in text:
        raise InvalidAddress("contains U+FFFD, the mark of text that was decoded wrongly")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_ADDRESS_OCTETS:
        raise InvalidAddress(f"is longer than {MAX_ADDRESS_OCTETS} octets (RFC 5321)")
    try:
        valid = validate_email(text, check_deliverability=False, strict=True)
    except EmailNotValidError as exc:
        raise InvalidAddress(str(exc)) from None
    normalised = unicodedata.normalize("NFC", f"{valid.local_part.lower()}@{valid.domain.lower()}")
    if len(normalised.encode("utf-8")) > MAX_ADDRESS_OCTETS:
        raise InvalidAddress(f"is longer than {MAX_ADDRESS_OCTETS} octets (RFC 5321)")
    return Address(normalised=normalised, given=text)


def normalise_address(text: str) -> str:
    return parse_address(text).normalised


def _coerce(value: Any) -> Address:
    if isinstance(value, Address):
        return value
    if not isinstance(value, str):
        raise InvalidAddress("must be a string")
    try:
        return parse_address(value)
    except InvalidAddress as exc:
        raise InvalidAddress(f"{value!r} is not a valid email address: {exc}") from None


EmailAddress = Annotated[
    Address,
    BeforeValidator(_coerce),
    PlainSerializer(lambda address: address.given, return_type=str),
    # idn-email (RFC 6531): internationalised addresses are accepted and matched in one form.
    WithJsonSchema({"type": "string", "format": "idn-email", "maxLength": MAX_ADDRESS_OCTETS}),
]
"""An address field: parsed on the way in, echoed as given on the way out."""
