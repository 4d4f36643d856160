"""Owns verification of the audit chain: recompute every hash from the stored canonical bytes,
check the query columns and the evidence documents against them, and the head against the
last event; streamed in `seq` order in chunks, in constant memory."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlmodel import Session, col, select

from prefcenter.audit.canonical import (
    EVENT_COLUMNS,
    EVENT_KEYS,
    FREE_TEXT_DIGESTS,
    FREE_TEXT_FIELDS,
    GENESIS_HASH,
)
from prefcenter.audit.key_check import key_matches_trail, wrong_key_detail
from prefcenter.audit.keys import AuditKeys
from prefcenter.contacts.models import Contact
from prefcenter.db import Database

CHUNK = 20_000
Progress = Callable[[int, int], None]  # (events checked so far, events in the chain)
# The deep check, run in the verification's snapshot after the chain verified: the first
# contact whose current state its events do not imply, or None. It lives with the state it
# checks (consent.ledger.replay), above this layer, and is passed in.
StateReplay = Callable[[Session], str | None]


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


# A format's canonical keys in the object's own (sorted) order: `orjson.loads` of the stored
# bytes gives its values in this order.
_SORTED_KEYS = {v: [*sorted((*keys, "v"))] for v, keys in EVENT_KEYS.items()}
# Every column that holds a canonical value, in sorted order (`_row_columns`).
_COLUMNS = tuple(sorted(EVENT_COLUMNS))
# Where each format's values are among `_COLUMNS`, and which columns must be null in it.
_PICK = {v: [_COLUMNS.index(k) for k in keys[:-1]] for v, keys in _SORTED_KEYS.items()}
_NULL = {
    v: [i for i, k in enumerate(_COLUMNS) if k not in keys] for v, keys in _SORTED_KEYS.items()
}
_TIMES = ("occurred_at", "recorded_at")
# The stored bytes end in `"v":N}`: which format's JSON the SQL compares them with.
_SUFFIXES = {v: b'"v":%d}' % v for v in EVENT_KEYS}
_NO_DIGESTS = [None] * len(FREE_TEXT_FIELDS)
# A chunk's row: canonical, hash, document, seq, contact_id, evidence_digest, whether the
# database finds the columns to be what the canonical bytes say, then the chain's digests of
# the free text (FREE_TEXT_DIGESTS order). The database checks the columns by writing them as
# JSON itself, keys in sorted order, in the format the bytes end in (the columns of the other
# format must be null), and comparing that with the bytes: PostgreSQL's `to_json(text)` and
# SQLite's `json_object` escape strings exactly as RFC 8785 does (short escapes for \b \t \n
# \f \r, `\u00xx` for the other control characters, the rest as it is), and the times are
# formatted as `format_time` does. An event it finds to differ is checked again in Python
# (`_check_columns`) before it is called bad: the SQL is the fast path, not the judge. Keyset
# chunks over the primary key on PostgreSQL (an index range scan and a merge with the
# evidence); one query read in chunks on SQLite. The free text of a chunk's events is read
# apart, a range of `audit_free_text` by seq, and matched to its events in Python: a join
# would cost SQLite a b-tree probe for every event, with free text or without.
_DIGESTS_SQL = ", ".join(f"e.{name}" for name in FREE_TEXT_DIGESTS)
_PG_CHUNK = (
    "SELECT e.canonical, e.hash, d.document, e.seq, e.contact_id, e.evidence_digest, "  # noqa: S608
    f"convert_to({{json}}, 'UTF8') = e.canonical, {_DIGESTS_SQL} "
    "FROM audit_event e LEFT JOIN audit_evidence d ON d.seq = e.seq "
    "WHERE e.seq > %s ORDER BY e.seq LIMIT {limit}"
)
_SQLITE_ALL = (
    "SELECT e.canonical, e.hash, d.document, e.seq, e.contact_id, e.evidence_digest, "  # noqa: S608
    f"{{json}} = e.canonical, {_DIGESTS_SQL} "
    "FROM audit_event e LEFT JOIN audit_evidence d ON d.seq = e.seq "
    "WHERE e.seq > 0 ORDER BY e.seq"
)
_FREE_TEXT = (
    f"SELECT seq, {', '.join(FREE_TEXT_FIELDS)} FROM audit_free_text "  # noqa: S608
    "WHERE seq > {placeholder} AND seq <= {placeholder}"
)
_ONE = "SELECT {columns} FROM audit_event e WHERE e.seq = {placeholder}"


def _column_sql(name: str, dialect: str) -> str:
    """A column as `_check_columns` compares it: SQLAlchemy keeps SQLite times as
    `YYYY-MM-DD HH:MM:SS.ffffff` UTC text; PostgreSQL's are datetimes."""
    if dialect != "postgresql" and name in _TIMES:
        return f"replace(e.{name}, ' ', 'T') || 'Z'"
    return f"e.{name}"


def _by_format(json_of: dict[int, str], dialect: str) -> str:
    """The JSON of the format whose `"v":N}` the stored bytes end in, null when a column that
    format has no key for is not (the Python check then names the event)."""
    last = (
        "substr(e.canonical, -6)"
        if dialect != "postgresql"
        else "substring(e.canonical FROM octet_length(e.canonical) - 5)"
    )
    cases = []
    for version, json in json_of.items():
        others_null = " AND ".join(f"e.{_COLUMNS[i]} IS NULL" for i in _NULL[version])
        suffix = _SUFFIXES[version].hex()
        literal = f"X'{suffix}'" if dialect != "postgresql" else f"'\\x{suffix}'::bytea"
        cases.append(f"WHEN {last} = {literal} AND {others_null} THEN {json}")
    return f"CASE {' '.join(cases)} END"


def _pg_json_sql() -> str:
    """The canonical bytes as PostgreSQL writes them from the columns (as text)."""
    json_of = {}
    for version, keys in _SORTED_KEYS.items():
        parts = []
        for name in keys[:-1]:
            if name in _TIMES:
                value = (
                    f"""'"' || to_char(e.{name} AT TIME ZONE 'UTC', """
                    f"""'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '"'"""
                )
            elif name == "seq":
                value = "e.seq::text"
            else:
                value = f"coalesce(to_json(e.{name})::text, 'null')"
            parts.append(f"""'"{name}":' || {value}""")
        json_of[version] = "'{' || " + " || ',' || ".join(parts) + f""" || ',"v":{version}}}'"""
    return _by_format(json_of, "postgresql")


def _sqlite_json_sql() -> str:
    """The canonical bytes as SQLite writes them from the columns (as a blob)."""
    json_of = {}
    for version, keys in _SORTED_KEYS.items():
        pairs = ", ".join(f"'{name}', {_column_sql(name, 'sqlite')}" for name in keys[:-1])
        json_of[version] = f"CAST(json_object({pairs}, 'v', {version}) AS BLOB)"
    return _by_format(json_of, "sqlite")


# A chunk: its events' rows, and the free text of those of them that have a row in
# `audit_free_text`, by seq.
_Chunk = tuple[list[Any], dict[int, tuple[str | None, ...]]]


def _free_texts(cursor: Any, sql: str, rows: list[Any]) -> dict[int, tuple[str | None, ...]]:
    """The free text of the events in `rows` (those after the seq before the first up to the
    last: the events are checked gap-free), by seq."""
    cursor.execute(sql, (rows[0][3] - 1, rows[-1][3]))
    return {row[0]: tuple(row[1:]) for row in cursor.fetchall()}


def _chunks(cursor: Any, dialect: str) -> Iterator[_Chunk]:
    """Every event with its evidence document and free text, in seq order, a chunk at a
    time."""
    if dialect == "postgresql":
        yield from _prefetched_chunks(cursor)
        return
    texts_cursor = cursor.connection.cursor()
    texts_sql = _FREE_TEXT.format(placeholder="?")
    cursor.execute(_SQLITE_ALL.format(json=_sqlite_json_sql()))
    while rows := cursor.fetchmany(CHUNK):
        yield rows, _free_texts(texts_cursor, texts_sql, rows)


def _prefetched_chunks(cursor: Any) -> Iterator[_Chunk]:
    """PostgreSQL's chunks, the next one asked for while the caller checks the last: the
    server writes JSON and reads pages on one core while Python hashes on the other. One
    query in flight at a time on the connection (psycopg serialises any other use of it)."""
    sql = _PG_CHUNK.format(json=_pg_json_sql(), limit=CHUNK)
    texts_sql = _FREE_TEXT.format(placeholder="%s")

    def fetch(after: int) -> _Chunk:
        cursor.execute(sql, (after,), binary=True)
        rows: list[Any] = cursor.fetchall()
        return rows, _free_texts(cursor, texts_sql, rows) if rows else {}

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-verify") as fetcher:
        pending = fetcher.submit(fetch, 0)
        while True:
            rows, texts = pending.result()
            if not rows:
                return
            if len(rows) == CHUNK:
                pending = fetcher.submit(fetch, rows[-1][3])
            yield rows, texts
            if len(rows) < CHUNK:
                return


def _row_columns(cursor: Any, dialect: str, seq: int) -> list[Any]:
    """The columns of one event, as `_check_columns` compares them."""
    columns = ", ".join(_column_sql(name, dialect) for name in _COLUMNS)
    placeholder = "%s" if dialect == "postgresql" else "?"
    cursor.execute(_ONE.format(columns=columns, placeholder=placeholder), (seq,))
    return list(cursor.fetchone())


def verify_chain(
    database: Database,
    keys: AuditKeys,
    *,
    replay: StateReplay | None = None,
    progress: Progress | None = None,
) -> VerifyResult:
    """Check the whole chain in one consistent snapshot; names the first bad `seq`; with
    `replay` (deep), then the current state against the events, in the same snapshot.

    An event is bad when its `seq` is not the next one (a gap names the first missing seq),
    its hash is not SHA-256(previous hash ‖ its canonical bytes), a query column or keyed hash
    beside the bytes says something else than they do, or its evidence document does not match
    its digest (a missing document is fine only for an erased contact). The head must name the
    last event: a head behind the events names the first event past it (inserted), a head
    ahead of them the first missing seq (a deleted tail). A trail none of whose first keyed
    digests checks was written under another audit key: said so, with no seq named.
    """
    with database.transaction(write=False, snapshot=True) as session:
        if key_matches_trail(session, keys) is False:
            return VerifyResult(ok=False, checked=0, detail=wrong_key_detail(keys))
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
        if replay is not None:
            contact = replay(session)
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

    Per event: SHA-256 onto the previous hash, compared with the stored one; the columns
    against the canonical bytes (`_check_columns`; only where the database's SQL said they
    differ); the evidence document's and the free text's keyed digests. Locals, not globals,
    in the loop: it runs a million times.
    """
    sha256 = hashlib.sha256
    hmac_sha256 = keys.hmac_sha256
    postgres = dialect == "postgresql"
    no_digests = _NO_DIGESTS
    known_digests: _KnownDigests = {}
    prev = GENESIS_HASH
    last_hex = GENESIS_HASH.hex()
    expected_seq = 1
    lookup = cursor.connection.cursor()
    for rows, free_texts in _chunks(cursor, dialect):
        erased_candidates: list[tuple[int, str | None, str]] = []
        for canonical, stored_hash, document, seq, contact_id, digest, same, *digests in rows:
            if seq != expected_seq:
                raise _Bad(expected_seq, f"seq {expected_seq} is missing")
            prev = sha256(prev + canonical).digest()
            last_hex = prev.hex()
            if last_hex != stored_hash:
                raise _Bad(seq, "its hash is not SHA-256(previous hash ‖ its canonical bytes)")
            if not same:  # the database says they differ: look again, in Python
                columns = _row_columns(lookup, dialect, seq)
                _check_columns(seq, canonical, columns, parse_times=postgres)
            if document is not None:
                if digest is None or hmac_sha256(document).hex() != digest:
                    raise _Bad(seq, "its evidence document does not match its digest")
            elif digest is not None:
                erased_candidates.append((seq, contact_id, "evidence document"))
            texts = free_texts.get(seq)
            if texts is not None:
                _check_free_text(keys, known_digests, seq, texts, digests)
            elif digests != no_digests:
                erased_candidates.append((seq, contact_id, "free text (reason, campaign id)"))
            expected_seq += 1
        if erased_candidates:
            _check_missing_documents(session, erased_candidates)
        if progress is not None:
            progress(expected_seq - 1, head_seq)
    return expected_seq - 1, last_hex


# A campaign's id comes back with each of its one-clicks: each distinct text is hashed once
# per run (an HMAC and its hex are some 3 µs an event in Python, a look-up a tenth of that),
# up to this many texts.
_KNOWN_TEXTS = 10_000
_KnownDigests = dict[tuple[str | None, ...], list[str | None]]


def _check_free_text(
    keys: AuditKeys,
    known: _KnownDigests,
    seq: int,
    texts: tuple[str | None, ...],
    stored: list[str | None],
) -> None:
    """The event's free text is what the chain's digests of it stand for (FREE_TEXT_FIELDS
    order); a text the chain has no digest for is not. Names the first field that differs."""
    expected = known.get(texts)
    if expected is None:
        expected = [
            keys.free_text_digest(name, value)
            for name, value in zip(FREE_TEXT_FIELDS, texts, strict=True)
        ]
        if len(known) < _KNOWN_TEXTS:
            known[texts] = expected
    if expected != stored:
        for name, want, have in zip(FREE_TEXT_FIELDS, expected, stored, strict=True):
            if want != have:
                raise _Bad(seq, f"its {name} does not match the digest in its canonical bytes")


def _check_columns(seq: int, canonical: bytes, columns: list[Any], *, parse_times: bool) -> None:
    """The columns (in `_COLUMNS` order) are the values of the canonical object, in its
    format; those its format has no key for are null."""
    try:
        decoded = orjson.loads(canonical)
        version = decoded["v"]
        keys = _SORTED_KEYS.get(version) if type(version) is int else None
        if keys is None or [*decoded] != keys:
            raise _Bad(seq, "its canonical bytes are not an event")
        values = [decoded[key] for key in keys[:-1]]
        if parse_times:  # PostgreSQL hands out datetimes
            for i, key in enumerate(keys[:-1]):
                if key in _TIMES:
                    values[i] = datetime.fromisoformat(values[i])
    except (ValueError, TypeError, KeyError, IndexError):
        raise _Bad(seq, "its canonical bytes are not an event") from None
    if values != [columns[i] for i in _PICK[version]] or any(
        columns[i] is not None for i in _NULL[version]
    ):
        raise _Bad(seq, "its columns differ from its canonical bytes")


def _check_missing_documents(session: Session, missing: list[tuple[int, str | None, str]]) -> None:
    """An evidence document or free text may be missing only because its contact was
    erased. `missing`: (seq, contact id, what is missing)."""
    contact_ids = sorted({c for _, c, _ in missing if c is not None})
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
    for seq, contact_id, what in missing:
        if contact_id not in erased:
            raise _Bad(seq, f"its {what} is missing and its contact was not erased")
