"""Owns what counts as plain text for values that no schema validates (names given on the
command line, claims inside signed tokens): stored and shown as they are, on both engines."""

from __future__ import annotations

import re

_CONTROL = re.compile("[\x00-\x1f\x7f]")


def is_plain_text(text: str) -> bool:
    """No control characters (PostgreSQL refuses NUL in text) and valid UTF-8, i.e. no lone
    surrogates (what Python makes of non-UTF-8 bytes in argv)."""
    if _CONTROL.search(text):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
