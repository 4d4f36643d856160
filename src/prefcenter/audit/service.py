"""Use cases of the audit trail: append an event to the hash chain (gap-free `seq`). Reading
events back is audit.reading."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, update
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, col

from prefcenter.audit.canonical import (
    CANONICAL_KEYS,
    FREE_TEXT_FIELDS,
    EventParts,
    encode_document,
    event_parts,
    format_time,
)
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.models import AuditEvent, AuditEvidence, AuditFreeText, AuditHead
from prefcenter.audit.schemas import NewEvent
from prefcenter.db import UtcDateTime, settings_of_session, utcnow

HEAD_ID = 1
# The session's events waiting for its commit (Session.info is per session, i.e. per request).
_PENDING = "prefcenter.audit.pending"
_EVENTS = AuditEvent.__table__  # type: ignore[attr-defined]
_EVIDENCE = AuditEvidence.__table__  # type: ignore[attr-defined]
_FREE_TEXT = AuditFreeText.__table__  # type: ignore[attr-defined]
# The columns an append inserts beside seq, recorded_at, canonical and hash: the keys of the
# format written now (audit.canonical), in that order. The other format's stay null.
_EVENT_COLUMNS = tuple(k for k in CANONICAL_KEYS if k not in ("seq", "recorded_at"))
_NO_FREE_TEXT = (None,) * len(FREE_TEXT_FIELDS)


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


@dataclass(slots=True)
class _Prepared:
    """An event with everything that does not depend on its place in the chain."""

    row: dict[str, Any]  # the insert's parameters but for seq, recorded_at, canonical, hash
    parts: EventParts  # its canonical bytes but for seq and recorded_at
    document: bytes | None
    # The row of `audit_free_text` but its seq (FREE_TEXT_FIELDS); None when both are None.
    free_text: tuple[str | None, ...] | None
    occurred_text: str  # `occurred_at` as `format_time` writes it


def _prepare(keys: AuditKeys, new: NewEvent) -> _Prepared:
    document = encode_document(new.context, new.evidence)
    free_text = tuple(getattr(new, name) for name in FREE_TEXT_FIELDS)
    row: dict[str, Any] = {
        "id": new.id,
        "kind": new.kind.value,
        "occurred_at": format_time(new.occurred_at),
        "contact_id": new.contact_id,
        "topic": new.topic,
        "from_status": new.from_status,
        "to_status": new.to_status,
        "outcome": new.outcome,
        "actor": new.actor,
        "source": new.source,
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
    return _Prepared(
        row=row,
        parts=parts,
        document=document,
        free_text=None if free_text == _NO_FREE_TEXT else free_text,
        occurred_text=occurred_text,
    )


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
    INSERT INTO audit_event (seq, recorded_at, canonical, hash, {", ".join(_EVENT_COLUMNS)})
    SELECT seq, recorded_at, {_CANONICAL_PG}, hash,
        {", ".join(f"%({c})s" for c in _EVENT_COLUMNS)}
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


def _extra_ctes_pg(item: _Prepared, params: dict[str, Any]) -> str:
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
    the COMMIT alone. The caller's parameter names must not be the event's (`_EVENT_COLUMNS`,
    `head`, `tail`, `document`, `text_…`). Nothing else may append in the same transaction.
    """
    item = _prepare(keys, new)
    params: dict[str, Any] = {**item.row, "head": item.parts.head, "tail": item.parts.tail}
    ctes = _append_ctes_pg(only_if=only_if) + _extra_ctes_pg(item, params)
    return ctes, params


@sa_event.listens_for(OrmSession, "before_commit")
def _write_pending(session: OrmSession) -> None:
    """Write the session's pending events, last thing before its COMMIT.

    Everything that does not depend on the place in the chain (keyed hashes, evidence
    documents, the canonical bytes but for seq and time) is built before the head lock is
    taken. Under the lock: one event on PostgreSQL is one statement (`_APPEND_ONE_PG`);
    several take `count` numbers in one statement, Python splices and hashes, the inserts
    follow (set-based: executemany, from 100 events a binary COPY), then the new head hash.
    SQLite goes through its driver (`_append_sqlite`).
    """
    pending: list[NewEvent] = session.info.pop(_PENDING, [])
    if not pending:
        return
    keys = AuditKeys.from_settings(settings_of_session(session))
    prepared = [_prepare(keys, new) for new in pending]
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
        _append_sqlite(session, prepared)
        return
    head = session.execute(
        _take_seqs(len(prepared), postgres=postgres), {} if postgres else {"now": utcnow()}
    ).one()
    recorded_at: datetime = head[2]
    recorded_text = format_time(recorded_at)
    seq = head[0] - len(prepared)
    prev_hash = bytes.fromhex(head[1])
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
    if postgres and len(events) >= _COPY_FROM:
        _copy_rows(session, events, documents, free_texts)
    else:
        session.execute(insert(_EVENTS), events)
        if documents:
            session.execute(insert(_EVIDENCE), documents)
        if free_texts:
            session.execute(insert(_FREE_TEXT), free_texts)
    session.execute(_SET_HEAD_HASH, {"head_hash": prev_hash.hex()})


# SQLite runs in-process, so its statements cost what the Python around them costs: the driver
# directly, not SQLAlchemy's statement machinery (a third of the append's time otherwise).
# Times are stored as SQLAlchemy stores them there (`UtcDateTime`): naive UTC text.
_SQLITE_INSERT_EVENT = (
    f"INSERT INTO audit_event (seq, recorded_at, canonical, hash, {', '.join(_EVENT_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join(['?'] * (4 + len(_EVENT_COLUMNS)))})"
)
_SQLITE_INSERT_EVIDENCE = "INSERT INTO audit_evidence (seq, document) VALUES (?, ?)"
_SQLITE_INSERT_FREE_TEXT = (
    f"INSERT INTO audit_free_text (seq, {', '.join(FREE_TEXT_FIELDS)}) "  # noqa: S608
    f"VALUES ({', '.join(['?'] * (1 + len(FREE_TEXT_FIELDS)))})"
)
_OCCURRED = _EVENT_COLUMNS.index("occurred_at")


def _sqlite_time(text: str) -> str:
    """`2026-11-25T15:20:03.123456Z` (format_time) as SQLAlchemy stores it on SQLite."""
    return f"{text[:10]} {text[11:26]}"


def _append_sqlite(session: OrmSession, prepared: list[_Prepared]) -> None:
    """The writer holds SQLite's write lock since its BEGIN IMMEDIATE: read the head, chain
    the events onto it, insert them, move the head."""
    dbapi = session.connection().connection.dbapi_connection
    assert dbapi is not None
    cursor = dbapi.cursor()
    try:
        seq, head_hash = cursor.execute(
            f"SELECT seq, hash FROM audit_head WHERE id = {HEAD_ID}"  # noqa: S608
        ).fetchone()
        recorded_text = format_time(utcnow())
        recorded_at = _sqlite_time(recorded_text)
        prev_hash = bytes.fromhex(head_hash)
        sha256 = hashlib.sha256
        events: list[tuple[Any, ...]] = []
        documents: list[tuple[int, bytes]] = []
        free_texts: list[tuple[Any, ...]] = []
        for item in prepared:
            seq += 1
            canonical = item.parts.join(recorded_text, seq)
            prev_hash = sha256(prev_hash + canonical).digest()
            row = item.row
            events.append(
                (
                    seq,
                    recorded_at,
                    canonical,
                    prev_hash.hex(),
                    *[row[name] for name in _EVENT_COLUMNS[:_OCCURRED]],
                    _sqlite_time(item.occurred_text),
                    *[row[name] for name in _EVENT_COLUMNS[_OCCURRED + 1 :]],
                )
            )
            if item.document is not None:
                documents.append((seq, item.document))
            if item.free_text is not None:
                free_texts.append((seq, *item.free_text))
        cursor.executemany(_SQLITE_INSERT_EVENT, events)
        if documents:
            cursor.executemany(_SQLITE_INSERT_EVIDENCE, documents)
        if free_texts:
            cursor.executemany(_SQLITE_INSERT_FREE_TEXT, free_texts)
        cursor.execute(
            f"UPDATE audit_head SET seq = ?, hash = ?, recorded_at = ? WHERE id = {HEAD_ID}",  # noqa: S608
            (seq, prev_hash.hex(), recorded_at),
        )
    finally:
        cursor.close()


# From this many events on (an import's batch), PostgreSQL gets them by binary COPY: a few
# µs per row where an executemany costs tens (psycopg pipelines one INSERT per row).
_COPY_FROM = 100
_COPY_EVENT_COLUMNS = ("seq", "recorded_at", "canonical", "hash", *_EVENT_COLUMNS)
_COPY_EVENT_TYPES = (
    "int8",
    "timestamptz",
    "bytea",
    "text",
    *["timestamptz" if name == "occurred_at" else "text" for name in _EVENT_COLUMNS],
)


def _copy_rows(
    session: OrmSession,
    events: list[dict[str, Any]],
    documents: list[dict[str, Any]],
    free_texts: list[dict[str, Any]],
) -> None:
    dbapi = session.connection().connection.dbapi_connection
    assert dbapi is not None
    cursor = dbapi.cursor()
    try:
        with cursor.copy(
            f"COPY audit_event ({', '.join(_COPY_EVENT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(list(_COPY_EVENT_TYPES))
            for row in events:
                copy.write_row([row[name] for name in _COPY_EVENT_COLUMNS])
        if documents:
            with cursor.copy(
                "COPY audit_evidence (seq, document) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", "bytea"])
                for document in documents:
                    copy.write_row((document["seq"], document["document"]))
        if free_texts:
            columns = ("seq", *FREE_TEXT_FIELDS)
            with cursor.copy(
                f"COPY audit_free_text ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", *["text"] * len(FREE_TEXT_FIELDS)])
                for free_text in free_texts:
                    copy.write_row([free_text[name] for name in columns])
    finally:
        cursor.close()


@sa_event.listens_for(OrmSession, "after_rollback")
def _forget_pending(session: OrmSession) -> None:
    session.info.pop(_PENDING, None)
