"""The fast encoder writes exactly the RFC 8785 bytes for every event shape we store."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from prefcenter.audit.canonical import (
    CANONICAL_KEYS,
    CANONICAL_VERSION,
    CHAIN_FIELDS,
    EVENT_COLUMNS,
    EVENT_FIELDS,
    EVENT_KEYS,
    GENESIS_HASH,
    QUERY_COLUMNS,
    chain_hash,
    encode_document,
    encode_event,
    event_parts,
    format_time,
)
from prefcenter.audit.models import AuditEvent
from prefcenter.audit.schemas import NewEvent

# Any unicode text but lone surrogates (not encodable as UTF-8, so no column can hold them).
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=60)
values = st.one_of(st.none(), texts, st.integers(min_value=0, max_value=2**53 - 1))
events = st.fixed_dictionaries(dict.fromkeys(CANONICAL_KEYS, values))
first_format_events = st.fixed_dictionaries(dict.fromkeys(EVENT_KEYS[1], values))

# Evidence documents as callers send them: any nesting of JSON values.
exact_integers = st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1)
ascii_keys = st.text(st.characters(max_codepoint=0x7F), max_size=12)
any_keys = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)


def json_documents(keys: st.SearchStrategy[str], *, floats: bool) -> st.SearchStrategy[Any]:
    scalars: st.SearchStrategy[Any] = st.none() | st.booleans() | exact_integers | texts
    if floats:
        scalars |= st.floats(allow_nan=False, allow_infinity=False)
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4)
        ),
        max_leaves=24,
    )


@given(events)
def test_orjson_with_sorted_keys_is_rfc8785_for_events(event: dict[str, str | int | None]) -> None:
    assert encode_event(event) == rfc8785.dumps({**event, "v": CANONICAL_VERSION})


@given(first_format_events)
def test_first_format_events_are_encoded_as_format_1(event: dict[str, str | int | None]) -> None:
    """Events of format 1 (free text in clear) are what migration 0003 and the releases
    before 0007 wrote: the keys say which format an event is."""
    assert encode_event(event) == rfc8785.dumps({**event, "v": 1})


@pytest.mark.parametrize(
    "keys",
    [
        (*CANONICAL_KEYS, "reason"),  # a format 2 event with its text in clear
        tuple(k for k in CANONICAL_KEYS if k != "reason_digest"),
        (*EVENT_KEYS[1], "v"),
    ],
)
def test_keys_of_no_format_are_refused(keys: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="not the keys of any format"):
        encode_event(dict.fromkeys(keys))


def test_the_event_table_has_a_column_for_every_key_of_every_format() -> None:
    """One list of an event's columns (audit.canonical): the table, the appends and
    verification all follow it; `/v1/audit` shows the same fields in either format."""
    table = {c.name for c in AuditEvent.__table__.columns}  # type: ignore[attr-defined]
    assert table == {*EVENT_COLUMNS, "canonical", "hash"}
    assert all(set(keys) <= set(EVENT_COLUMNS) for keys in EVENT_KEYS.values())
    assert set(QUERY_COLUMNS) <= set(EVENT_COLUMNS)
    assert max(EVENT_KEYS) == CANONICAL_VERSION


def test_a_writer_gives_every_field_but_those_of_the_chain() -> None:
    """The append reads each field the chain does not assign from NewEvent by its name."""
    given_fields = set(EVENT_FIELDS) - set(CHAIN_FIELDS)
    assert set(CHAIN_FIELDS) <= set(EVENT_FIELDS)
    assert given_fields <= set(NewEvent.__dataclass_fields__)


@given(st.text(st.characters(max_codepoint=0x7F)))
def test_control_characters_are_escaped_alike(value: str) -> None:
    event: dict[str, str | int | None] = dict.fromkeys(CANONICAL_KEYS, value)
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


@given(
    st.dictionaries(ascii_keys, json_documents(ascii_keys, floats=False), max_size=4),
    st.dictionaries(ascii_keys, json_documents(ascii_keys, floats=False), max_size=4),
)
def test_orjson_with_sorted_keys_is_rfc8785_for_plain_documents(
    context: dict[str, Any], evidence: dict[str, Any]
) -> None:
    """What `encode_document` relies on for documents without floats and with ASCII keys
    (any text in values: unicode, control characters, quotes, nesting)."""
    document = {"context": context, "evidence": evidence}
    assert orjson.dumps(document, option=orjson.OPT_SORT_KEYS) == rfc8785.dumps(document)


@given(
    st.dictionaries(any_keys, json_documents(any_keys, floats=True), max_size=4),
    st.dictionaries(any_keys, json_documents(any_keys, floats=True), max_size=4),
)
def test_every_document_is_encoded_as_rfc8785_does(
    context: dict[str, Any], evidence: dict[str, Any]
) -> None:
    expected = rfc8785.dumps({"context": context, "evidence": evidence})
    assert encode_document(context, evidence) == (expected if context or evidence else None)


@pytest.mark.parametrize(
    "evidence",
    [
        {"score": 0.1},  # RFC 8785 writes doubles its own way (ECMAScript)
        {"big": 1e21, "small": 5e-324},
        # UTF-16 order puts the astral character first, code point order last.
        {"\uffff": 1, "\U0001f600": 2},
    ],
)
def test_documents_orjson_would_write_otherwise_go_through_the_reference(
    evidence: dict[str, Any],
) -> None:
    assert encode_document({}, evidence) == rfc8785.dumps({"context": {}, "evidence": evidence})


def test_integers_beyond_a_double_are_refused_as_rfc8785_refuses_them() -> None:
    with pytest.raises(rfc8785.IntegerDomainError):
        encode_document({}, {"n": 2**53})


@given(events)
def test_an_event_joined_from_its_parts_is_its_canonical_bytes(
    event: dict[str, str | int | None],
) -> None:
    seq = event["seq"] if isinstance(event["seq"], int) else 7
    moment = datetime(2026, 11, 25, 15, 20, 3, 123456, tzinfo=UTC)
    rest = {k: v for k, v in event.items() if k not in ("seq", "recorded_at")}
    joined = event_parts(rest).join(format_time(moment), seq)
    assert joined == encode_event({**rest, "seq": seq, "recorded_at": format_time(moment)})
