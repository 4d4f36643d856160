"""Owns an event made ready for the chain before the head lock is taken: its row values, keyed
hashes, evidence document and canonical bytes, all but what depends on its place (`seq`,
`recorded_at`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from prefcenter.audit.canonical import (
    CANONICAL_KEYS,
    CHAIN_FIELDS,
    EVENT_FIELDS,
    FREE_TEXT_FIELDS,
    EventParts,
    EventValue,
    encode_document,
    event_parts,
    format_time,
)
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.schemas import NewEvent

# The columns an append inserts beside seq, recorded_at, canonical and hash: the keys of the
# format written now (audit.canonical), in that order. The other format's stay null.
EVENT_INSERT_COLUMNS = tuple(k for k in CANONICAL_KEYS if k not in CHAIN_FIELDS)
# The fields a writer gives, read from NewEvent's attributes of the same names.
_GIVEN_FIELDS = tuple(k for k in EVENT_FIELDS if k not in CHAIN_FIELDS)
_NO_FREE_TEXT = (None,) * len(FREE_TEXT_FIELDS)


@dataclass(slots=True)
class PreparedEvent:
    """An event with everything that does not depend on its place in the chain."""

    row: dict[str, Any]  # the insert's parameters but for seq, recorded_at, canonical, hash
    parts: EventParts  # its canonical bytes but for seq and recorded_at
    document: bytes | None
    # The row of `audit_free_text` but its seq (FREE_TEXT_FIELDS); None when both are None.
    free_text: tuple[str | None, ...] | None
    occurred_text: str  # `occurred_at` as `format_time` writes it


def prepare_event(keys: AuditKeys, new: NewEvent) -> PreparedEvent:
    document = encode_document(new.context, new.evidence)
    free_text = tuple(getattr(new, name) for name in FREE_TEXT_FIELDS)
    row: dict[str, Any] = {
        **{name: getattr(new, name) for name in _GIVEN_FIELDS},
        "kind": new.kind.value,
        "occurred_at": format_time(new.occurred_at),
        # Only keyed digests of the free text go into the chain: a reason may hold personal
        # data, which must go with an erasure (the text is in `audit_free_text`).
        **{
            f"{name}_digest": keys.free_text_digest(name, text)
            for name, text in zip(FREE_TEXT_FIELDS, free_text, strict=True)
        },
        "address_hash": keys.address_hash(new.address) if new.address is not None else None,
        "evidence_digest": keys.evidence_digest(document) if document is not None else None,
    }
    parts = event_parts(row)
    occurred_text = row["occurred_at"]
    row["occurred_at"] = new.occurred_at
    return PreparedEvent(
        row=row,
        parts=parts,
        document=document,
        free_text=None if free_text == _NO_FREE_TEXT else free_text,
        occurred_text=occurred_text,
    )


class PartsTemplate:
    """The canonical parts of many events that share every value but those of `varying`,
    encoded once by `event_parts` itself: each event's parts are then the template's bytes
    with its own values spliced in as JSON. They are the bytes `event_parts` writes for it: a
    JSON value's encoding does not depend on where it stands, and the keys keep their sorted
    places whatever the values (an import writes a million events this way)."""

    __slots__ = ("_head", "_head_slots", "_tail", "_tail_slots")

    def __init__(self, fixed: dict[str, Any], varying: tuple[str, ...]) -> None:
        markers = {name: f"\x00slot {name}\x00" for name in varying}
        parts = event_parts({**fixed, **markers})
        encoded = {orjson.dumps(marker): name for name, marker in markers.items()}
        head, self._head_slots = _split(parts.head, encoded, varying)
        tail, self._tail_slots = _split(parts.tail, encoded, varying)
        # Each part as one `%` format, the values going in as their JSON (`%b`): one
        # formatting a part, not a join of its pieces.
        self._head = b"%b".join(piece.replace(b"%", b"%%") for piece in head)
        self._tail = b"%b".join(piece.replace(b"%", b"%%") for piece in tail)

    def parts(self, values: tuple[EventValue, ...]) -> EventParts:
        """The parts of the event whose varying values are `values` (in `varying` order)."""
        encoded = [orjson.dumps(value) for value in values]
        return EventParts(
            head=self._head % tuple([encoded[i] for i in self._head_slots]),
            tail=self._tail % tuple([encoded[i] for i in self._tail_slots]),
        )


def _split(
    encoded: bytes, markers: dict[bytes, str], varying: tuple[str, ...]
) -> tuple[list[bytes], list[int]]:
    """`encoded` cut at each marker: the pieces between them, and which value goes in each
    cut (its index in `varying`)."""
    pieces = [encoded]
    slots: list[int] = []
    while True:
        rest = pieces[-1]
        found = [(rest.find(m), m) for m in markers if rest.find(m) >= 0]
        if not found:
            return pieces, slots
        at, marker = min(found)
        pieces[-1:] = [rest[:at], rest[at + len(marker) :]]
        slots.append(varying.index(markers[marker]))
