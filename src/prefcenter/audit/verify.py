"""Owns verification of the audit chain: recompute every hash from the stored canonical bytes,
check the query columns and the evidence documents against them, and the head against the
last event; streamed in `seq` order in chunks, in constant memory."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
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


# The canonical object's keys in its own (sorted) order: `orjson.loads` of the stored bytes
# gives its values in this order, and the chunk queries select the columns in it too.
_SORTED_KEYS = tuple(sorted((*CANONICAL_KEYS, "v")))
_COLUMNS = _SORTED_KEYS[:-1]  # every key but "v" is a column
_TIMES = tuple(i for i, key in enumerate(_COLUMNS) if key in ("occurred_at", "recorded_at"))
_SEQ = _COLUMNS.index("seq")
_CONTACT_ID = _COLUMNS.index("contact_id")
_EVIDENCE_DIGEST = _COLUMNS.index("evidence_digest")
_CANONICAL, _HASH, _DOCUMENT = len(_COLUMNS), len(_COLUMNS) + 1, len(_COLUMNS) + 2
# PostgreSQL: binary COPY of each chunk, typed (times arrive as datetimes; no formatting in
# SQL). COPY takes no parameters: the one value, an int, is formatted in.
_PG_TYPES = [
    "timestamptz" if name in ("occurred_at", "recorded_at") else "int8" if name == "seq" else "text"
    for name in _COLUMNS
] + ["bytea", "text", "bytea"]
_PG_CHUNK = (
    "COPY (SELECT {columns}, e.canonical, e.hash, d.document "
    "FROM audit_event e LEFT JOIN audit_evidence d ON d.seq = e.seq "
    "WHERE e.seq > {after} ORDER BY e.seq LIMIT {limit}) TO STDOUT (FORMAT BINARY)"
)
# SQLite: one query read in chunks; SQLAlchemy keeps times as `YYYY-MM-DD HH:MM:SS.ffffff`
# UTC text, which `replace` turns into the canonical form at C speed.
_SQLITE_ALL = (
    "SELECT {columns}, e.canonical, e.hash, d.document "
    "FROM audit_event e LEFT JOIN audit_evidence d ON d.seq = e.seq "
    "WHERE e.seq > 0 ORDER BY e.seq"
)


def _column_sql(name: str, dialect: str) -> str:
    if dialect != "postgresql" and name in ("occurred_at", "recorded_at"):
        return f"replace(e.{name}, ' ', 'T') || 'Z'"
    return f"e.{name}"


def _chunks(cursor: Any, dialect: str) -> Iterator[list[Any]]:
    """Every event with its evidence document, in seq order, a chunk at a time; a row holds
    `_COLUMNS`, then canonical, hash and document."""
    columns = ", ".join(_column_sql(name, dialect) for name in _COLUMNS)
    if dialect == "postgresql":
        after = 0
        while True:
            sql = _PG_CHUNK.format(columns=columns, after=int(after), limit=CHUNK)
            with cursor.copy(sql) as copy:
                copy.set_types(_PG_TYPES)
                rows = list(copy.rows())
            if not rows:
                return
            yield rows
            after = rows[-1][_SEQ]
    cursor.execute(_SQLITE_ALL.format(columns=columns))
    while rows := cursor.fetchmany(CHUNK):
        yield rows


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
    """Check every event; returns the last seq and its hash (hex).

    Per event: SHA-256 onto the previous hash, compared with the stored one; the canonical
    bytes decoded once and their values compared with the columns (times parsed on
    PostgreSQL, whose driver hands out datetimes; text on SQLite); the evidence document's
    keyed digest. Locals, not globals or attributes, in the loop: it runs a million times.
    """
    sha256 = hashlib.sha256
    loads = orjson.loads
    digest = hmac.digest
    hmac_key = keys.hmac_key
    parse_times = dialect == "postgresql"
    from_text = datetime.fromisoformat
    first_time, second_time = _TIMES
    n_columns = len(_COLUMNS)
    sorted_keys = list(_SORTED_KEYS)
    version = CANONICAL_VERSION
    prev = GENESIS_HASH
    last_hex = GENESIS_HASH.hex()
    expected_seq = 1
    for rows in _chunks(cursor, dialect):
        erased_candidates: list[tuple[int, str | None]] = []
        for row in rows:
            seq = row[_SEQ]
            if seq != expected_seq:
                raise _Bad(expected_seq, f"seq {expected_seq} is missing")
            canonical = row[_CANONICAL]
            prev = sha256(prev + canonical).digest()
            last_hex = prev.hex()
            if last_hex != row[_HASH]:
                raise _Bad(seq, "its hash is not SHA-256(previous hash ‖ its canonical bytes)")
            try:
                decoded = loads(canonical)
                values = list(decoded.values())
                if parse_times:
                    values[first_time] = from_text(values[first_time])
                    values[second_time] = from_text(values[second_time])
            except (ValueError, TypeError, AttributeError, IndexError):
                raise _Bad(seq, "its canonical bytes are not an event") from None
            if (
                list(decoded) != sorted_keys
                or values[n_columns] != version
                or values[:n_columns] != list(row[:n_columns])
            ):
                raise _Bad(seq, "its columns differ from its canonical bytes")
            document = row[_DOCUMENT]
            evidence_digest = row[_EVIDENCE_DIGEST]
            if document is None:
                if evidence_digest is not None:
                    erased_candidates.append((seq, row[_CONTACT_ID]))
            elif evidence_digest is None or (
                digest(hmac_key, document, "sha256").hex() != evidence_digest
            ):
                raise _Bad(seq, "its evidence document does not match its digest")
            expected_seq += 1
        if erased_candidates:
            _check_missing_documents(session, erased_candidates)
        if progress is not None:
            progress(expected_seq - 1, head_seq)
    return expected_seq - 1, last_hex


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
