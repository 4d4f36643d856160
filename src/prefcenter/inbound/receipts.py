"""Owns the SQL of `inbound_receipt`: claim a batch's receipts in one statement (those seen
before are not claimed again), and forget them after their retention."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import bindparam, delete, insert, text
from sqlmodel import Session, col, select

from prefcenter.db import UtcDateTime
from prefcenter.inbound.models import InboundReceipt

_SQLITE_CHUNK = 900  # keys per query: SQLite binds each as a parameter

# In key order: two batches sharing receipts take their locks in one order (no deadlock).
_CLAIM_PG = text(
    "INSERT INTO inbound_receipt (key, provider, received_at) "
    "SELECT key, provider, :now FROM unnest(CAST(:keys AS text[]), CAST(:providers AS text[])) "
    "AS given (key, provider) ORDER BY key "
    "ON CONFLICT (key) DO NOTHING RETURNING key"
).bindparams(bindparam("now", type_=UtcDateTime()))


def claim_receipts(session: Session, keys: Mapping[str, str], *, now: datetime) -> set[str]:
    """Record these receipts (receipt key → provider) and return the ones that are new. A key
    seen before, or claimed by a concurrent request that commits first, is not returned:
    PostgreSQL makes the second insert wait for the first one's transaction; SQLite's writer
    holds the write lock from its BEGIN."""
    if not keys:
        return set()
    ordered = sorted(keys)
    if session.get_bind().dialect.name == "postgresql":
        claimed = session.execute(
            _CLAIM_PG,
            {"now": now, "keys": ordered, "providers": [keys[k] for k in ordered]},
        ).scalars()
        return set(claimed)
    seen: set[str] = set()
    for start in range(0, len(ordered), _SQLITE_CHUNK):
        chunk = ordered[start : start + _SQLITE_CHUNK]
        seen.update(
            session.exec(select(InboundReceipt.key).where(col(InboundReceipt.key).in_(chunk)))
        )
    new = [k for k in ordered if k not in seen]
    if new:
        session.execute(
            insert(InboundReceipt),
            [{"key": k, "provider": keys[k], "received_at": now} for k in new],
        )
    return set(new)


def forget_receipts(session: Session, *, before: datetime) -> None:
    session.execute(delete(InboundReceipt).where(col(InboundReceipt.received_at) < before))
