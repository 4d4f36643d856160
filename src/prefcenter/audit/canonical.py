"""Owns the bytes the chain hashes: the canonical JSON of an event (RFC 8785), the evidence
document, and the chain step `SHA-256(prev_hash ‖ canonical)`.

Events hold only strings, integers and nulls, for which orjson with sorted keys writes exactly
what RFC 8785 prescribes (a property test holds it to `rfc8785.dumps`); it is some thirty times
faster, which is what makes verifying millions of events take seconds. Evidence documents hold
whatever JSON callers sent: orjson too when the document is plain (no float, integers within
±2^53, ASCII keys: property-tested the same way), the reference encoder otherwise, because
RFC 8785 writes floats its own way and sorts keys by UTF-16 code units.

The keys `recorded_at` and `seq` sort next to each other, so an event's bytes are
`head ‖ recorded_at ‖ '","seq":' ‖ seq ‖ tail` (`EventParts`): everything but the two values
known only once the writer holds the head of the chain is encoded before it takes the lock.

Two formats, told apart by "v" and their keys (`EVENT_KEYS`): format 1 held an event's free
text (`reason`, `campaign_id`) in clear, so that text outlived an erasure; format 2, written
since migration 0007, holds its keyed digests instead. Stored events keep the bytes they were
hashed as, in whichever format.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import rfc8785

GENESIS_HASH = bytes(32)
# What every format of event commits to in clear.
EVENT_FIELDS = (
    "seq",
    "id",
    "kind",
    "recorded_at",
    "occurred_at",
    "contact_id",
    "topic",
    "from_status",
    "to_status",
    "outcome",
    "actor",
    "source",
)
# What the chain itself gives an event as it appends it; the writer gives the other fields.
CHAIN_FIELDS = ("seq", "recorded_at")
# Text that callers and staff write freely, where personal data can slip in (a phone number in
# a reason). Format 1 holds it in clear; format 2 holds its keyed digest (`reason_digest`, …)
# and the text lives in `audit_free_text`, which erasure deletes.
FREE_TEXT_FIELDS = ("campaign_id", "reason")
FREE_TEXT_DIGESTS = tuple(f"{name}_digest" for name in FREE_TEXT_FIELDS)
KEYED_HASHES = ("address_hash", "evidence_digest")
# What `/v1/audit` shows of an event (beside its evidence) and its export writes, in this order.
QUERY_COLUMNS = (*EVENT_FIELDS, *FREE_TEXT_FIELDS)
# Every key of the canonical object but "v", per format ("v"), in the order verification reads
# them from the database. Format 1: events written before migration 0007, kept as they were
# hashed.
EVENT_KEYS = {
    1: (*EVENT_FIELDS, *FREE_TEXT_FIELDS, *KEYED_HASHES),
    2: (*EVENT_FIELDS, *FREE_TEXT_DIGESTS, *KEYED_HASHES),
}
CANONICAL_VERSION = 2  # the format written now
CANONICAL_KEYS = EVENT_KEYS[CANONICAL_VERSION]
# The columns of `audit_event` that hold the canonical object's values: every key of every
# format. Those a format has no key for stay null (verification holds them to it).
EVENT_COLUMNS = (*EVENT_FIELDS, *FREE_TEXT_FIELDS, *FREE_TEXT_DIGESTS, *KEYED_HASHES)
_VERSION_OF_KEYS = {frozenset(keys): version for version, keys in EVENT_KEYS.items()}
EventValue = str | int | None


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds: `2026-11-25T15:20:03.123456Z`."""
    if value.tzinfo is None:
        raise ValueError("naive datetime in an audit event")
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # isoformat ends in "+00:00" here; it is some twice as fast as strftime (once per event).
    return value.isoformat(timespec="microseconds")[:-6] + "Z"


def encode_event(values: dict[str, EventValue]) -> bytes:
    """The canonical bytes of an event given every key of one format's EVENT_KEYS (times
    formatted); its keys say which format, and "v" is added.

    RFC 8785 sorts keys by UTF-16 code units; all our keys are ASCII, where that is the plain
    order orjson uses.
    """
    version = _VERSION_OF_KEYS.get(frozenset(values))
    if version is None:
        raise ValueError("not the keys of any format of event")
    return orjson.dumps({**values, "v": version}, option=orjson.OPT_SORT_KEYS)


# Keys that sort before `recorded_at`; those after `seq` are source, to_status, topic and v.
_HEAD_KEYS = frozenset(k for k in CANONICAL_KEYS if k < "recorded_at")
_SEQ_KEY = b'","seq":'


@dataclass(frozen=True, slots=True)
class EventParts:
    """The canonical bytes of an event but for its `recorded_at` and `seq`."""

    head: bytes  # `{…,"reason_digest":…,"recorded_at":"`
    tail: bytes  # `,"source":…,"v":2}`

    def join(self, recorded_at: str, seq: int) -> bytes:
        """The canonical bytes, `recorded_at` formatted by `format_time`."""
        return b"".join((self.head, recorded_at.encode("ascii"), _SEQ_KEY, b"%d" % seq, self.tail))


def event_parts(values: dict[str, EventValue]) -> EventParts:
    """`values` holds every key of CANONICAL_KEYS (the format written now) but `seq` and
    `recorded_at`."""
    head: dict[str, EventValue] = {}
    tail: dict[str, EventValue] = {"v": CANONICAL_VERSION}
    for key, value in values.items():
        (head if key in _HEAD_KEYS else tail)[key] = value
    return EventParts(
        head=orjson.dumps(head, option=orjson.OPT_SORT_KEYS)[:-1] + b',"recorded_at":"',
        tail=b"," + orjson.dumps(tail, option=orjson.OPT_SORT_KEYS)[1:],
    )


def encode_document(context: dict[str, Any], evidence: dict[str, Any]) -> bytes | None:
    """The evidence document of an event, or None when it has neither context nor evidence."""
    if not context and not evidence:
        return None
    document = {"context": context, "evidence": evidence}
    if _plain(document):
        return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    return rfc8785.dumps(document)


def is_plain_document(document: dict[str, Any]) -> bool:
    """Whether orjson with sorted keys writes this document exactly as RFC 8785 does (then
    `encode_document` uses it)."""
    return _plain(document)


_MAX_EXACT = 2**53 - 1  # RFC 8785 numbers are IEEE doubles; larger integers are refused


def _plain(document: dict[str, Any]) -> bool:
    """JSON that orjson writes exactly as RFC 8785 does: no float, integers that a double holds
    exactly, object keys in ASCII (where UTF-8 and UTF-16 order agree). A loop over a stack,
    not recursion: this runs for every event of an import."""
    stack: list[Any] = [document]
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind is str or kind is bool or value is None:
            continue
        if kind is dict:
            try:
                if not "".join(value).isascii():  # a key that is not a str raises
                    return False
            except TypeError:
                return False
            stack.extend(value.values())
        elif kind is list:
            stack.extend(value)
        elif kind is int:
            if not -_MAX_EXACT <= value <= _MAX_EXACT:
                return False
        else:
            return False
    return True


def decode_document(document: bytes | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(context, evidence) of a stored document; both empty for none (or an erased one)."""
    if document is None:
        return {}, {}
    decoded = orjson.loads(document)
    return decoded["context"], decoded["evidence"]


def chain_hash(prev_hash: bytes, canonical: bytes) -> bytes:
    return hashlib.sha256(prev_hash + canonical).digest()
