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
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import rfc8785

CANONICAL_VERSION = 1
GENESIS_HASH = bytes(32)
# The query columns of `audit_event`, each also a key of the canonical object.
QUERY_COLUMNS = (
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
    "campaign_id",
    "reason",
)
# Every key of the canonical object, in the order verification reads them from the database.
CANONICAL_KEYS = (*QUERY_COLUMNS, "address_hash", "evidence_digest")
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
    """The canonical bytes of an event given every key of CANONICAL_KEYS (times formatted).

    RFC 8785 sorts keys by UTF-16 code units; all our keys are ASCII, where that is the plain
    order orjson uses.
    """
    return orjson.dumps({**values, "v": CANONICAL_VERSION}, option=orjson.OPT_SORT_KEYS)


# Keys that sort before `recorded_at`; those after `seq` are source, to_status, topic and v.
_HEAD_KEYS = frozenset(k for k in CANONICAL_KEYS if k < "recorded_at")
_SEQ_KEY = b'","seq":'


@dataclass(frozen=True, slots=True)
class EventParts:
    """The canonical bytes of an event but for its `recorded_at` and `seq`."""

    head: bytes  # `{…,"reason":…,"recorded_at":"`
    tail: bytes  # `,"source":…,"v":1}`

    def join(self, recorded_at: str, seq: int) -> bytes:
        """The canonical bytes, `recorded_at` formatted by `format_time`."""
        return b"".join((self.head, recorded_at.encode("ascii"), _SEQ_KEY, b"%d" % seq, self.tail))


def event_parts(values: dict[str, EventValue]) -> EventParts:
    """`values` holds every key of CANONICAL_KEYS but `seq` and `recorded_at`."""
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
