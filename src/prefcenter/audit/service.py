"""Use cases of the audit trail: append an event to the hash chain (gap-free `seq`). Reading
events back is audit.reading."""

from __future__ import annotations

import functools
import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, update
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, col

from prefcenter.audit.canonical import (
    FREE_TEXT_FIELDS,
    format_time,
)
from prefcenter.audit.driver_appends import COPY_FROM, append_sqlite, copy_chained
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.models import HEAD_ID, AuditEvent, AuditEvidence, AuditFreeText, AuditHead
from prefcenter.audit.prepared import EVENT_INSERT_COLUMNS, PreparedEvent, prepare_event
from prefcenter.audit.schemas import NewEvent
from prefcenter.db import (
    UtcDateTime,
    settings_of_session,
    utcnow,
)

# The session's events waiting for its commit (Session.info is per session, i.e. per request).
_PENDING = "prefcenter.audit.pending"
_EVENTS = AuditEvent.__table__  # type: ignore[attr-defined]
_EVIDENCE = AuditEvidence.__table__  # type: ignore[attr-defined]
_FREE_TEXT = AuditFreeText.__table__  # type: ignore[attr-defined]


def append_event(session: Session, new: NewEvent) -> str:
    """Append one event to the caller's transaction; returns its id (known at once).

    The event is written when the transaction commits, as the very last statement before
    COMMIT (`_write_pending`): that is where it takes the next `seq`, which locks the head row
    until COMMIT and so serialises every writer. Taking it here instead would hold that lock
    while the request renders its answer and travels between threads; at commit it is held
    for the inserts and the COMMIT alone. Still inside the transaction, so `seq` stays
    gap-free: a transaction that rolls back never took a number. (A query in the same
    transaction does not see the event yet.)
    """
    session.info.setdefault(_PENDING, []).append(new)
    return new.id


def _take_seqs(count: int, *, postgres: bool) -> Any:
    """Move the head `count` places and stamp the time, locking its row until COMMIT; returns
    the new head seq, the hash of the event at the old head, and the time. PostgreSQL reads
    the clock in the SET, which it evaluates again once the lock is had if it had to wait, so
    `recorded_at` never runs backwards along seq (SQLite's writer holds its lock from BEGIN)."""
    return (
        update(AuditHead)
        .where(col(AuditHead.id) == HEAD_ID)
        .values(
            seq=col(AuditHead.seq) + count,
            recorded_at=func.clock_timestamp()
            if postgres
            else bindparam("now", type_=UtcDateTime()),
        )
        .returning(col(AuditHead.seq), col(AuditHead.hash), col(AuditHead.recorded_at))
    )


_SET_HEAD_HASH = (
    update(AuditHead).where(col(AuditHead.id) == HEAD_ID).values(hash=bindparam("head_hash"))
)

# One event on PostgreSQL is one statement, so the head lock is held for one round trip and
# the COMMIT. Its single UPDATE of the head takes the next seq and the time, splices them into
# the event's canonical bytes and hashes those onto the head's hash (`sha256()` is built into
# PostgreSQL ≥ 11); the event is inserted from what it returns, its canonical bytes spliced
# again the same way. The sub-select is evaluated once per row (OFFSET 0 keeps it from being
# flattened, which would read the clock twice), and again, with the clock, if the UPDATE had
# to wait for the lock: `recorded_at` never runs backwards along seq. `to_char` writes the
# time as `format_time` does.
_CANONICAL_PG = """%(head)s::bytea || convert_to(
    to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    || '","seq":' || seq, 'UTF8') || %(tail)s::bytea"""


@functools.cache  # one text per condition (a handful): built once, not per event
def _append_ctes_pg(*, only_if: str = "") -> str:
    """The append of one event as two CTEs, `moved` (the head, which RETURNs the event's seq)
    and `event`. `only_if`: a further SQL condition for moving the head (see
    `guarded_append_pg`)."""
    condition = f" AND ({only_if})" if only_if else ""
    return f"""moved AS (
    UPDATE audit_head AS head SET (seq, recorded_at, hash) = (
        SELECT seq, recorded_at,
            encode(sha256(decode(head.hash, 'hex') || {_CANONICAL_PG}), 'hex')
        FROM (SELECT head.seq + 1 AS seq, clock_timestamp() AS recorded_at OFFSET 0) AS taken
    )
    WHERE head.id = {HEAD_ID}{condition}
    RETURNING head.seq, head.recorded_at, head.hash
), event AS (
    INSERT INTO audit_event (seq, recorded_at, canonical, hash, {", ".join(EVENT_INSERT_COLUMNS)})
    SELECT seq, recorded_at, {_CANONICAL_PG}, hash,
        {", ".join(f"%({c})s" for c in EVENT_INSERT_COLUMNS)}
    FROM moved
)
"""  # noqa: S608  (built from this module's constants; every value is a bound parameter)


_EVIDENCE_CTE_PG = """, evidence AS (
    INSERT INTO audit_evidence (seq, document) SELECT seq, %(document)s FROM moved
)
"""
_FREE_TEXT_CTE_PG = f""", free_text AS (
    INSERT INTO audit_free_text (seq, {", ".join(FREE_TEXT_FIELDS)})
    SELECT seq, {", ".join(f"%(text_{name})s" for name in FREE_TEXT_FIELDS)} FROM moved
)
"""  # noqa: S608  (built from audit.canonical's constants; every value is a bound parameter)


def _extra_ctes_pg(item: PreparedEvent, params: dict[str, Any]) -> str:
    """The CTEs that insert the event's evidence document and free text, if it has them, with
    their parameters added to `params`."""
    ctes = ""
    if item.document is not None:
        params["document"] = item.document
        ctes += _EVIDENCE_CTE_PG
    if item.free_text is not None:
        params.update(
            (f"text_{name}", text)
            for name, text in zip(FREE_TEXT_FIELDS, item.free_text, strict=True)
        )
        ctes += _FREE_TEXT_CTE_PG
    return ctes


# One statement text per combination (evidence? free text?): the same texts every time, so
# psycopg prepares them.
_APPEND_ONE_PG = {
    (evidence, free_text): "WITH "
    + _append_ctes_pg()
    + (_EVIDENCE_CTE_PG if evidence else "")
    + (_FREE_TEXT_CTE_PG if free_text else "")
    + "SELECT 1"
    for evidence in (False, True)
    for free_text in (False, True)
}


def guarded_append_pg(
    keys: AuditKeys, new: NewEvent, *, only_if: str
) -> tuple[str, dict[str, Any]]:
    """One event's append on PostgreSQL as CTEs for a caller's own statement, with its
    parameters: `moved AS (…), event AS (…)[, evidence AS (…)][, free_text AS (…)]`, to
    follow the caller's CTEs after a comma. The head moves, and so the event is written, only
    where the SQL condition `only_if` holds (say `EXISTS (SELECT 1 FROM written)`, the
    caller's guarded write); the statement can then `SELECT seq FROM moved`, a row only if the
    event was appended.

    For a statement that writes a state and its event in one round trip outside any explicit
    transaction (consent.ledger.lane). The head lock is taken when `moved` runs, so
    everything `only_if` reads runs first, and the lock is held for the event's inserts and
    the COMMIT alone. The caller's parameter names must not be the event's (`EVENT_INSERT_COLUMNS`,
    `head`, `tail`, `document`, `text_…`). Nothing else may append in the same transaction.
    """
    item = prepare_event(keys, new)
    params: dict[str, Any] = {**item.row, "head": item.parts.head, "tail": item.parts.tail}
    ctes = _append_ctes_pg(only_if=only_if) + _extra_ctes_pg(item, params)
    return ctes, params


def append_prepared(session: Session, items: list[PreparedEvent]) -> None:
    """Append events already prepared (`prepared.PartsTemplate`: an import's), in order, as
    `append_event` does."""
    session.info.setdefault(_PENDING, []).extend(items)


@sa_event.listens_for(OrmSession, "before_commit")
def _write_pending(session: OrmSession) -> None:
    """Write the session's pending events, last thing before its COMMIT.

    Everything that does not depend on the place in the chain (keyed hashes, evidence
    documents, the canonical bytes but for seq and time) is built before the head lock is
    taken. Under the lock: one event on PostgreSQL is one statement (`_APPEND_ONE_PG`);
    several take `count` numbers in one statement, Python splices and hashes, the inserts
    follow (set-based: executemany; from 100 events a binary COPY, each row sent as it is
    hashed, their evidence beside the head's update: driver_appends.copy_chained), then
    the new head hash.
    SQLite goes through its driver (`driver_appends.append_sqlite`).
    """
    pending: list[NewEvent | PreparedEvent] = session.info.pop(_PENDING, [])
    if not pending:
        return
    keys = AuditKeys.from_settings(settings_of_session(session))
    prepared = [
        item if isinstance(item, PreparedEvent) else prepare_event(keys, item) for item in pending
    ]
    session.flush()  # every other change first: the head lock is the last one taken
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres and len(prepared) == 1:
        (item,) = prepared
        params = {**item.row, "head": item.parts.head, "tail": item.parts.tail}
        _extra_ctes_pg(item, params)
        statement = _APPEND_ONE_PG[item.document is not None, item.free_text is not None]
        session.connection().exec_driver_sql(statement, params)
        return
    if not postgres:
        append_sqlite(session, prepared)
        return
    head = session.execute(
        _take_seqs(len(prepared), postgres=postgres), {} if postgres else {"now": utcnow()}
    ).one()
    recorded_at: datetime = head[2]
    seq = head[0] - len(prepared)
    prev_hash = bytes.fromhex(head[1])
    if postgres and len(prepared) >= COPY_FROM:
        copy_chained(session, prepared, seq=seq, prev_hash=prev_hash, recorded_at=recorded_at)
        return
    recorded_text = format_time(recorded_at)
    sha256 = hashlib.sha256
    events: list[dict[str, Any]] = []
    documents: list[dict[str, Any]] = []
    free_texts: list[dict[str, Any]] = []
    for item in prepared:
        seq += 1
        canonical = item.parts.join(recorded_text, seq)
        prev_hash = sha256(prev_hash + canonical).digest()
        row = item.row
        row["seq"] = seq
        row["recorded_at"] = recorded_at
        row["canonical"] = canonical
        row["hash"] = prev_hash.hex()
        events.append(row)
        if item.document is not None:
            documents.append({"seq": seq, "document": item.document})
        if item.free_text is not None:
            free_texts.append(dict(zip(FREE_TEXT_FIELDS, item.free_text, strict=True), seq=seq))
    session.execute(insert(_EVENTS), events)
    if documents:
        session.execute(insert(_EVIDENCE), documents)
    if free_texts:
        session.execute(insert(_FREE_TEXT), free_texts)
    session.execute(_SET_HEAD_HASH, {"head_hash": prev_hash.hex()})


@sa_event.listens_for(OrmSession, "after_rollback")
def _forget_pending(session: OrmSession) -> None:
    session.info.pop(_PENDING, None)
