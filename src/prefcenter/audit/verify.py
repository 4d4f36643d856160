"""Owns verification of the audit chain: recompute every hash from the stored canonical bytes,
check the query columns and the evidence documents against them, and the head against the
last event; streamed in `seq` order in chunks, in constant memory."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text
from sqlmodel import Session, col, select

from prefcenter.audit import chain_rows
from prefcenter.audit.canonical import (
    FREE_TEXT_FIELDS,
    GENESIS_HASH,
)
from prefcenter.audit.key_check import key_matches_trail, wrong_key_detail
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.models import AuditEvent
from prefcenter.contacts.models import Contact
from prefcenter.db import Database
from prefcenter.driver import DriverCursor, driver_cursor
from prefcenter.metrics import record_verify

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


def verify_chain(
    database: Database,
    keys: AuditKeys,
    *,
    replay: StateReplay | None = None,
    progress: Progress | None = None,
) -> VerifyResult:
    """`check_chain`, its time and result kept for /metrics."""
    result = check_chain(database, keys, replay=replay, progress=progress)
    record_verify(ok=result.ok, at=time.time())
    return result


def check_chain(
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
        head_seq, head_hash = session.execute(
            text("SELECT seq, hash FROM audit_head WHERE id = 1")
        ).one()
        try:
            checked, last_hash = _walk(
                session, keys, database, head_seq=head_seq, progress=progress
            )
        except _Bad as bad:
            return VerifyResult(
                ok=False, checked=bad.seq - 1, first_bad_seq=bad.seq, detail=bad.detail
            )
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
    session: Session,
    keys: AuditKeys,
    database: Database,
    *,
    head_seq: int,
    progress: Progress | None,
) -> tuple[int, str]:
    """Check every event; returns the last seq and its hash (hex).

    Per event: SHA-256 onto the previous hash, compared with the stored one; the columns
    against the canonical bytes (`_check_columns`; only where the database's SQL said they
    differ); the evidence document's and the free text's keyed digests. Locals, not globals,
    in the loop: it runs a million times. On PostgreSQL the database's column check runs apart
    (`chain_rows.ColumnCheck`, in the same snapshot), and what it found is checked once the
    walk ends: an event it names before the first event found bad otherwise comes first.
    """
    connection = session.connection()
    lookup = driver_cursor(connection)
    dialect = connection.dialect.name
    if dialect != "postgresql":
        return _walk_chain(session, keys, connection, lookup, head_seq, progress)
    snapshot = chain_rows.export_snapshot(connection)
    with chain_rows.readers(database.settings) as readers:
        apart = chain_rows.ColumnCheck(readers, snapshot)
        try:
            with chain_rows.stream_events(readers, snapshot) as rows:
                result = _walk_stream(session, keys, rows, head_seq, progress)
        except _Bad as bad:
            _check_differing(lookup, dialect, apart.differing(), before=bad.seq)
            raise
        _check_differing(lookup, dialect, apart.differing(), before=None)
    return result


def _check_differing(
    lookup: DriverCursor, dialect: str, differing: list[int], *, before: int | None
) -> None:
    """The events the database's column check found to differ (`ColumnCheck`), before the
    first event found bad otherwise, checked again in Python: the first that does differ is
    the first bad one."""
    for seq in differing:
        if before is not None and seq >= before:
            return
        _check_columns(lookup, dialect, seq, chain_rows.canonical_of(lookup, dialect, seq))


def _walk_chain(
    session: Session,
    keys: AuditKeys,
    connection: Connection,
    lookup: DriverCursor,
    head_seq: int,
    progress: Progress | None,
) -> tuple[int, str]:
    """SQLite's walk (`_walk_stream` is PostgreSQL's, the same checks of the same rows)."""
    dialect = connection.dialect.name
    sha256 = hashlib.sha256
    # `keys.hmac_sha256(document).hex()`, inlined: a call less an event.
    copy_inner = keys.hmac_sha256.inner.copy
    copy_outer = keys.hmac_sha256.outer.copy
    known_digests: _KnownDigests = {}
    known = known_digests.get
    prev = GENESIS_HASH
    last_hex = GENESIS_HASH.hex()
    expected_seq = 1
    for rows, free_texts in chain_rows.read_chunks(connection):
        erased_candidates: list[tuple[int, str]] = []
        texts_of = free_texts.get
        # The chain's digests of the free text, one name each (FREE_TEXT_DIGESTS order): the
        # row is unpacked in one step, no list an event.
        for canonical, stored_hash, document, seq, digest, same, d0, d1 in rows:
            if seq != expected_seq:
                raise _Bad(expected_seq, f"seq {expected_seq} is missing")
            prev = sha256(prev + canonical).digest()
            last_hex = prev.hex()
            if last_hex != stored_hash:
                raise _Bad(seq, "its hash is not SHA-256(previous hash ‖ its canonical bytes)")
            if not same:  # the database says they differ: look again, in Python
                _check_columns(lookup, dialect, seq, canonical)
            if document is not None:
                inner = copy_inner()
                inner.update(document)
                outer = copy_outer()
                outer.update(inner.digest())
                if outer.hexdigest() != digest:  # a null digest too
                    raise _Bad(seq, "its evidence document does not match its digest")
            elif digest is not None:
                erased_candidates.append((seq, "evidence document"))
            texts = texts_of(seq)
            if texts is not None:
                if known(texts) != (d0, d1):  # not known yet, or not these
                    _check_free_text(keys, known_digests, seq, texts, (d0, d1))
            elif d0 is not None or d1 is not None:
                erased_candidates.append((seq, "free text (reason, campaign id)"))
            expected_seq += 1
        _check_missing_documents(session, erased_candidates)  # most often none: no query
        if progress is not None:
            progress(expected_seq - 1, head_seq)
    return expected_seq - 1, last_hex


def _walk_stream(
    session: Session,
    keys: AuditKeys,
    rows: Iterator[tuple[Any, ...]],
    head_seq: int,
    progress: Progress | None,
) -> tuple[int, str]:
    """PostgreSQL's walk over `chain_rows.stream_events`: `_walk_chain`'s checks, in the same
    order, the missing documents and progress at the same chunk ends (every `CHUNK` events),
    the free text in the row (no look-up), the columns checked apart."""
    sha256 = hashlib.sha256
    copy_inner = keys.hmac_sha256.inner.copy
    copy_outer = keys.hmac_sha256.outer.copy
    known_digests: _KnownDigests = {}
    known = known_digests.get
    prev = GENESIS_HASH
    last_hex = GENESIS_HASH.hex()
    expected_seq = 1
    chunk = chain_rows.CHUNK
    chunk_end = chunk
    erased_candidates: list[tuple[int, str]] = []
    for canonical, stored_hash, document, seq, digest, d0, d1, has_text, t0, t1 in rows:
        if seq != expected_seq:
            raise _Bad(expected_seq, f"seq {expected_seq} is missing")
        prev = sha256(prev + canonical).digest()
        last_hex = prev.hex()
        if last_hex != stored_hash:
            raise _Bad(seq, "its hash is not SHA-256(previous hash ‖ its canonical bytes)")
        if document is not None:
            inner = copy_inner()
            inner.update(document)
            outer = copy_outer()
            outer.update(inner.digest())
            if outer.hexdigest() != digest:  # a null digest too
                raise _Bad(seq, "its evidence document does not match its digest")
        elif digest is not None:
            erased_candidates.append((seq, "evidence document"))
        if has_text:
            texts = (t0, t1)
            if known(texts) != (d0, d1):  # not known yet, or not these
                _check_free_text(keys, known_digests, seq, texts, (d0, d1))
        elif d0 is not None or d1 is not None:
            erased_candidates.append((seq, "free text (reason, campaign id)"))
        if seq == chunk_end:
            _end_chunk(session, erased_candidates, progress, seq, head_seq)
            chunk_end += chunk
        expected_seq += 1
    if expected_seq - 1 != chunk_end - chunk:  # a last, short chunk
        _end_chunk(session, erased_candidates, progress, expected_seq - 1, head_seq)
    return expected_seq - 1, last_hex


def _end_chunk(
    session: Session,
    erased_candidates: list[tuple[int, str]],
    progress: Progress | None,
    checked: int,
    head_seq: int,
) -> None:
    """What `_walk_chain` does at the end of each chunk: the chunk's missing documents
    (most often none: no query), then progress."""
    _check_missing_documents(session, erased_candidates)
    erased_candidates.clear()
    if progress is not None:
        progress(checked, head_seq)


# A campaign's id comes back with each of its one-clicks: each distinct text is hashed once
# per run (an HMAC and its hex are some 3 µs an event in Python, a look-up a tenth of that),
# up to this many texts.
_KNOWN_TEXTS = 10_000
_KnownDigests = dict[tuple[str | None, ...], tuple[str | None, ...]]


def _check_free_text(
    keys: AuditKeys,
    known: _KnownDigests,
    seq: int,
    texts: tuple[str | None, ...],
    stored: tuple[str | None, ...],
) -> None:
    """The event's free text is what the chain's digests of it stand for (FREE_TEXT_FIELDS
    order); a text the chain has no digest for is not. Names the first field that differs."""
    expected = known.get(texts)
    if expected is None:
        expected = tuple(
            keys.free_text_digest(name, value)
            for name, value in zip(FREE_TEXT_FIELDS, texts, strict=True)
        )
        if len(known) < _KNOWN_TEXTS:
            known[texts] = expected
    if expected != stored:
        for name, want, have in zip(FREE_TEXT_FIELDS, expected, stored, strict=True):
            if want != have:
                raise _Bad(seq, f"its {name} does not match the digest in its canonical bytes")


def _check_columns(lookup: DriverCursor, dialect: str, seq: int, canonical: bytes) -> None:
    columns = chain_rows.row_columns(lookup, dialect, seq)
    wrong = chain_rows.columns_differ(canonical, columns, parse_times=dialect == "postgresql")
    if wrong is not None:
        raise _Bad(seq, wrong)


def _check_missing_documents(session: Session, missing: list[tuple[int, str]]) -> None:
    """An evidence document or free text may be missing only because its contact was
    erased. `missing`: (seq, what is missing). The events' contacts are read here, for these
    events only: not a column more for every event of the walk."""
    if not missing:
        return
    contact_of: dict[int, str | None] = {}
    seqs = [seq for seq, _ in missing]
    for start in range(0, len(seqs), 500):
        contact_of.update(
            session.exec(
                select(AuditEvent.seq, AuditEvent.contact_id).where(
                    col(AuditEvent.seq).in_(seqs[start : start + 500])
                )
            ).all()
        )
    contact_ids = sorted({c for c in contact_of.values() if c is not None})
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
    for seq, what in missing:
        if contact_of.get(seq) not in erased:
            raise _Bad(seq, f"its {what} is missing and its contact was not erased")
