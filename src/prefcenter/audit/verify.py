"""Owns verification of the audit chain: recompute every hash from the stored canonical bytes,
check the query columns and the evidence documents against them, and the head against the
last event; streamed in `seq` order in chunks, in constant memory."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import text
from sqlmodel import Session, col, select

from prefcenter.audit.canonical import CANONICAL_KEYS, CANONICAL_VERSION, GENESIS_HASH
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.state import first_contact_off_its_events
from prefcenter.contacts.models import Contact
from prefcenter.db import Database

CHUNK = 20_000
Progress = Callable[[int, int], None]  # (events checked so far, events in the chain)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    # Deep verification only: the first contact whose current state its events do not imply.
    first_bad_contact: str | None = None
    # What is wrong, for people; None when ok.
    detail: str | None = None


class _Bad(Exception):
    def __init__(self, seq: int, detail: str) -> None:
        super().__init__(detail)
        self.seq = seq
        self.detail = detail


def _time_sql(column: str, dialect: str) -> str:
    """The column as the canonical object writes times: `2026-11-25T15:20:03.123456Z`."""
    if dialect == "postgresql":
        return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
    # SQLAlchemy keeps SQLite times as `YYYY-MM-DD HH:MM:SS.ffffff` in UTC.
    return f"replace({column}, ' ', 'T') || 'Z'"


def _chunk_sql(dialect: str) -> str:
    columns = [
        f"e.{name}"
        if name not in ("recorded_at", "occurred_at")
        else _time_sql(f"e.{name}", dialect)
        for name in CANONICAL_KEYS
    ]
    placeholder = "%s" if dialect == "postgresql" else "?"
    # Built from this module's constants only; the one value is a bound parameter.
    return (
        f"SELECT {', '.join(columns)}, e.canonical, e.hash, d.document "  # noqa: S608
        "FROM audit_event e LEFT JOIN audit_evidence d ON d.seq = e.seq "
        f"WHERE e.seq > {placeholder} ORDER BY e.seq LIMIT {CHUNK}"
    )


def verify_chain(
    database: Database,
    keys: AuditKeys,
    *,
    deep: bool = False,
    progress: Progress | None = None,
) -> VerifyResult:
    """Check the whole chain in one consistent snapshot; names the first bad `seq`.

    An event is bad when its `seq` is not the next one (a gap names the first missing seq),
    its hash is not SHA-256(previous hash ‖ its canonical bytes), a query column or keyed hash
    beside the bytes says something else than they do, or its evidence document does not match
    its digest (a missing document is fine only for an erased contact). The head must name the
    last event: a head behind the events names the first event past it (inserted), a head
    ahead of them the first missing seq (a deleted tail).
    """
    with database.transaction(write=False, snapshot=True) as session:
        dbapi = session.connection().connection.dbapi_connection
        assert dbapi is not None
        dialect = session.get_bind().dialect.name
        head_seq, head_hash = session.execute(
            text("SELECT seq, hash FROM audit_head WHERE id = 1")
        ).one()
        cursor = dbapi.cursor()
        try:
            checked, last_hash = _walk(
                cursor, session, keys, dialect, head_seq=head_seq, progress=progress
            )
        except _Bad as bad:
            return VerifyResult(
                ok=False, checked=bad.seq - 1, first_bad_seq=bad.seq, detail=bad.detail
            )
        finally:
            cursor.close()
        if head_seq < checked:
            return VerifyResult(
                ok=False,
                checked=head_seq,
                first_bad_seq=head_seq + 1,
                detail=f"events past the head (seq {head_seq}): inserted, not appended",
            )
        if head_seq > checked:
            return VerifyResult(
                ok=False,
                checked=checked,
                first_bad_seq=checked + 1,
                detail=f"the head is at seq {head_seq} but the events end at {checked}: deleted",
            )
        if head_hash != last_hash:
            return VerifyResult(
                ok=False,
                checked=checked - 1,
                first_bad_seq=checked if checked else None,
                detail="the head's hash is not the last event's hash",
            )
        if deep:
            contact = first_contact_off_its_events(session)
            if contact is not None:
                return VerifyResult(
                    ok=False,
                    checked=checked,
                    first_bad_contact=contact,
                    detail=f"contact {contact}'s current consent state is not what its "
                    "events imply",
                )
    return VerifyResult(ok=True, checked=checked)


def _walk(
    cursor: Any,
    session: Session,
    keys: AuditKeys,
    dialect: str,
    *,
    head_seq: int,
    progress: Progress | None,
) -> tuple[int, str]:
    """Check every event; returns the last seq and its hash (hex)."""
    sql = _chunk_sql(dialect)
    sha256 = hashlib.sha256
    dumps = orjson.dumps
    sort_keys = orjson.OPT_SORT_KEYS
    digest = hmac.digest
    hmac_key = keys.hmac_key
    keys_v = (*CANONICAL_KEYS, "v")
    n_values = len(CANONICAL_KEYS)
    prev = GENESIS_HASH
    last_hex = GENESIS_HASH.hex()
    expected_seq = 1
    while True:
        cursor.execute(sql, (expected_seq - 1,))
        rows: Sequence[Any] = cursor.fetchall()
        if not rows:
            return expected_seq - 1, last_hex
        erased_candidates: list[tuple[int, str | None]] = []
        for row in rows:
            seq = row[0]
            if seq != expected_seq:
                raise _Bad(expected_seq, f"seq {expected_seq} is missing")
            canonical = bytes(row[n_values])
            rebuilt = dumps(
                dict(zip(keys_v, (*row[:n_values], CANONICAL_VERSION), strict=True)),
                option=sort_keys,
            )
            prev = sha256(prev + canonical).digest()
            last_hex = prev.hex()
            if last_hex != row[n_values + 1]:
                raise _Bad(seq, "its hash is not SHA-256(previous hash ‖ its canonical bytes)")
            if rebuilt != canonical:
                raise _Bad(seq, "its columns differ from its canonical bytes")
            document = row[n_values + 2]
            evidence_digest = row[n_values - 1]
            if document is None:
                if evidence_digest is not None:
                    erased_candidates.append((seq, row[5]))  # contact_id
            elif evidence_digest is None or (
                digest(hmac_key, bytes(document), "sha256").hex() != evidence_digest
            ):
                raise _Bad(seq, "its evidence document does not match its digest")
            expected_seq += 1
        if erased_candidates:
            _check_missing_documents(session, erased_candidates)
        if progress is not None:
            progress(expected_seq - 1, head_seq)


def _check_missing_documents(session: Session, missing: list[tuple[int, str | None]]) -> None:
    """An evidence document may be missing only because its contact was erased."""
    contact_ids = sorted({c for _, c in missing if c is not None})
    erased: set[str] = set()
    for start in range(0, len(contact_ids), 500):
        part = contact_ids[start : start + 500]
        erased.update(
            session.exec(
                select(Contact.public_id).where(
                    col(Contact.erased_at).is_not(None), col(Contact.public_id).in_(part)
                )
            )
        )
    for seq, contact_id in missing:
        if contact_id not in erased:
            raise _Bad(seq, "its evidence document is missing and its contact was not erased")
