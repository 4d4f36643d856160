"""Owns the opaque cursors of keyset reads: a position (`seq`) written as text that a client
hands back as is, and refused as a problem when it is anything but what was handed out."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from prefcenter.problems import Unprocessable

# Up to 18 digits: every `seq` a BIGINT can hold, and never an integer Python would take
# seconds to parse.
_MAX_DIGITS = 18


class InvalidCursor(Unprocessable):
    slug = "invalid-cursor"
    title = "Invalid cursor"


@dataclass(frozen=True, slots=True)
class SeqCursor:
    """The codec of one feed's cursors. `kind` is written into each cursor, so that one feed's
    cursor is refused by another; `field` is the query parameter that carries it, named in
    the problem."""

    kind: str
    field: str

    def encode(self, seq: int) -> str:
        return base64.urlsafe_b64encode(f"{self.kind}:{seq}".encode()).decode().rstrip("=")

    def decode(self, cursor: str) -> int:
        """The `seq` a cursor stands for; anything but a cursor handed out is a 422."""
        try:
            text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            text = ""
        kind, _, digits = text.partition(":")
        valid = (
            kind == self.kind
            and digits.isascii()
            and digits.isdigit()
            and len(digits) <= _MAX_DIGITS
        )
        # Only the exact text handed out: base64 decoding alone would skip stray characters.
        if not valid or self.encode(int(digits)) != cursor:
            raise InvalidCursor(
                f"`{self.field}` is not a cursor this service handed out; "
                "pass a `next` value as is.",
                errors=[{"field": self.field, "detail": "is not a valid cursor"}],
            )
        return int(digits)
