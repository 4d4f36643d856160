"""The fast encoder writes exactly the RFC 8785 bytes for every event shape we store."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from prefcenter.audit.canonical import (
    CANONICAL_KEYS,
    CANONICAL_VERSION,
    GENESIS_HASH,
    chain_hash,
    encode_document,
    encode_event,
    format_time,
)

# Any unicode text but lone surrogates (not encodable as UTF-8, so no column can hold them).
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)
values = st.one_of(st.none(), texts, st.integers(min_value=0, max_value=2**53 - 1))
events = st.fixed_dictionaries({key: values for key in CANONICAL_KEYS})


@given(events)
def test_orjson_with_sorted_keys_is_rfc8785_for_events(event: dict[str, str | int | None]) -> None:
    assert encode_event(event) == rfc8785.dumps({**event, "v": CANONICAL_VERSION})


@given(st.text(st.characters(max_codepoint=0x7F)))
def test_control_characters_are_escaped_alike(value: str) -> None:
    event = dict.fromkeys(CANONICAL_KEYS, value)
    assert encode_event(event) == rfc8785.dumps({**event, "v": CANONICAL_VERSION})


def test_times_are_utc_with_microseconds() -> None:
    moment = datetime(2026, 11, 25, 15, 20, 3, 123456, tzinfo=UTC)
    assert format_time(moment) == "2026-11-25T15:20:03.123456Z"
    assert format_time(moment.replace(microsecond=0)) == "2026-11-25T15:20:03.000000Z"


def test_an_event_without_evidence_or_context_has_no_document() -> None:
    assert encode_document({}, {}) is None
    assert encode_document({}, {"score": 0.5}) == b'{"context":{},"evidence":{"score":0.5}}'


def test_the_chain_starts_from_32_zero_bytes() -> None:
    expected = hashlib.sha256(bytes(32) + b"{}").hexdigest()
    assert chain_hash(GENESIS_HASH, b"{}").hex() == expected
