"""Owns what counts as plain text for values that no schema validates (names given on the
command line, claims inside signed tokens): stored and shown as they are, on both engines."""

from __future__ import annotations


def is_plain_text(text: str) -> bool:
    """No control characters (PostgreSQL refuses NUL in text) and valid UTF-8, i.e. no lone
    surrogates (what Python makes of non-UTF-8 bytes in argv)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
