"""Owns an event made ready for the chain before the head lock is taken: its row values, keyed
hashes, evidence document and canonical bytes, all but what depends on its place (`seq`,
`recorded_at`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefcenter.audit.canonical import (
    CANONICAL_KEYS,
    CHAIN_FIELDS,
    EVENT_FIELDS,
    FREE_TEXT_FIELDS,
    EventParts,
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
