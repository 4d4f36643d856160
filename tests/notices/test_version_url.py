"""A version's URL: refused with any control or white-space character, the same characters
for the service's validator and for a client's JSON Schema engine (schemathesis found a URL
with U+0085 that the published pattern allowed and the service refused)."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from prefcenter.notices.schemas import NoticeVersionIn

VERSION = {
    "version": "v1",
    "language": "en",
    "sha256": "0" * 64,
    "effective_at": "2027-01-01T00:00:00Z",
    "material": False,
    "summary": "First.",
}
SPACES = ["\x00", "\x1f", " ", "\x7f", "\x85", "\xa0", "\u2003", "\u2028", "\u3000", "\ufeff"]


def published_pattern() -> str:
    pattern: str = NoticeVersionIn.model_json_schema()["properties"]["url"]["pattern"]
    return pattern


@pytest.mark.parametrize("space", SPACES, ids=[f"U+{ord(c):04X}" for c in SPACES])
def test_a_url_with_a_control_or_space_character_is_refused_by_both(space: str) -> None:
    url = f"https://example.com/privacy{space}v1"
    with pytest.raises(ValidationError):
        NoticeVersionIn.model_validate({**VERSION, "url": url})
    assert re.fullmatch(published_pattern(), url) is None


def test_an_ordinary_url_is_taken_by_both() -> None:
    url = "https://exämple.de/datenschutz?v=1#änderungen"
    assert NoticeVersionIn.model_validate({**VERSION, "url": url}).url == url
    assert re.fullmatch(published_pattern(), url) is not None
