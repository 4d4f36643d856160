"""Audit events as the releases before migration 0007 wrote them (format 1: the free text,
`reason` and `campaign_id`, in clear in the canonical bytes and in the event's columns)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, create_engine, text

from prefcenter.audit.canonical import (
    EVENT_KEYS,
    GENESIS_HASH,
    chain_hash,
    encode_event,
    format_time,
)
from prefcenter.audit.keys import AuditKeys
from prefcenter.db import UtcDateTime

START = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
FIRST_FORMAT_KEYS = EVENT_KEYS[1]
# Times bound as the service stores them (naive UTC text on SQLite).
_INSERT = text(
    f"INSERT INTO audit_event ({', '.join(FIRST_FORMAT_KEYS)}, canonical, hash) "
    f"VALUES ({', '.join(f':{name}' for name in FIRST_FORMAT_KEYS)}, :canonical, :hash)"
).bindparams(
    bindparam("recorded_at", type_=UtcDateTime()), bindparam("occurred_at", type_=UtcDateTime())
)
_MOVE_HEAD = text("UPDATE audit_head SET seq = :seq, hash = :hash, recorded_at = :at").bindparams(
    bindparam("at", type_=UtcDateTime())
)


def first_format_event(
    keys: AuditKeys, seq: int, *, address: str | None, **fields: Any
) -> dict[str, Any]:
    """The values of a format 1 event at `seq` (times as datetimes), `fields` over a topic
    change by `test`."""
    moment = START + timedelta(seconds=seq)
    values: dict[str, Any] = dict.fromkeys(FIRST_FORMAT_KEYS)
    values.update(
        seq=seq,
        id=f"first-format-{seq}",
        kind="topic_change",
        recorded_at=moment,
        occurred_at=moment,
        outcome="applied",
        actor="test",
        source="api",
        address_hash=keys.address_hash(address) if address is not None else None,
    )
    values.update(fields)
    return values


def write_first_format_events(database_url: str, events: list[dict[str, Any]]) -> None:
    """Chain `events` (from seq 1, on an empty trail) as the code before 0007 did, and move
    the head onto the last: canonical bytes of format 1, stored as they were hashed."""
    prev = GENESIS_HASH
    rows = []
    for values in events:
        canonical = encode_event(
            {
                **values,
                "recorded_at": format_time(values["recorded_at"]),
                "occurred_at": format_time(values["occurred_at"]),
            }
        )
        assert canonical.endswith(b'"v":1}')
        prev = chain_hash(prev, canonical)
        rows.append({**values, "canonical": canonical, "hash": prev.hex()})
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(_INSERT, rows)
            connection.execute(
                _MOVE_HEAD, {"seq": len(rows), "hash": prev.hex(), "at": rows[-1]["recorded_at"]}
            )
    finally:
        engine.dispose()
