"""Owns running an import: read the file, apply it batch by batch (each all-or-nothing in a
transaction of its own), append an audit event per applied row, and report what happened."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, TextIO

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.schemas import NewEvent, new_event_id
from prefcenter.audit.service import append_event
from prefcenter.consent.erased import erased_among
from prefcenter.consent.ledger.changes import ChangeRecord, change_event
from prefcenter.consent.rules import Decision
from prefcenter.contacts.service import mask_address, new_public_id
from prefcenter.db import Database, settings_of_session, utcnow
from prefcenter.imports import staging
from prefcenter.imports.formats import BrokenRow, ImportFormat, ImportRow, Row, open_text, read_rows
from prefcenter.imports.rules import (
    IMPORT_SOURCE,
    NEW_CONTACT,
    ContactState,
    RowOutcome,
    decide_row,
    requested_change,
    state_after,
)
from prefcenter.imports.schemas import (
    SAMPLE_SIZE,
    BatchReport,
    BatchStatus,
    CountWithSample,
    ImportReport,
)
from prefcenter.problems import Problem
from prefcenter.topics.errors import UnknownTopic
from prefcenter.topics.schemas import TopicKind
from prefcenter.topics.service import find_topic
from prefcenter.webhooks.queue import queue_inline_delivery, queue_many_deliveries
from prefcenter.webhooks.rules import EventType

DEFAULT_BATCH_SIZE = 10_000
# The report's counts that come with sample rows.
_SAMPLED = (
    "superseded",
    "refused_reversal",
    "refused_erased",
    "refused_no_evidence",
    "invalid",
)
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ImportRequest:
    topic: str
    name: str  # the import's own name (`--source NAME`), kept in each event's evidence
    actor: str  # who runs it: the API key, or `cli:<os user>`
    format: ImportFormat = ImportFormat.AUTO
    file_name: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    dry_run: bool = False
    # What the service observed about the request (client address, user agent), for events.
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ImportTopic:
    id: int
    key: str
    kind: TopicKind


@dataclass(slots=True)
class _Tally:
    """One batch's counts, merged into the report only if the batch commits."""

    subscribed: int = 0
    unsubscribed: int = 0
    unchanged: int = 0
    duplicates: int = 0
    superseded: CountWithSample = field(default_factory=CountWithSample)
    refused_reversal: CountWithSample = field(default_factory=CountWithSample)
    refused_erased: CountWithSample = field(default_factory=CountWithSample)
    refused_no_evidence: CountWithSample = field(default_factory=CountWithSample)
    invalid: CountWithSample = field(default_factory=CountWithSample)

    @property
    def applied(self) -> int:
        return self.subscribed + self.unsubscribed


def file_sha256(binary: IO[bytes]) -> str:
    """The checksum of a seekable file, which is left at its start again."""
    digest = hashlib.sha256()
    while chunk := binary.read(_HASH_CHUNK):
        digest.update(chunk)
    binary.seek(0)
    return digest.hexdigest()


def find_import_topic(database: Database, key: str) -> ImportTopic:
    """The topic an import applies to, from a short read transaction; unknown is a 422."""
    with database.transaction(write=False) as session:
        topic = find_topic(session, key)
    if topic is None or topic.id is None:
        raise UnknownTopic(
            f"There is no topic {key!r}; create it with PUT /v1/topics/{{key}} first.",
            errors=[{"field": "topic", "detail": "unknown topic"}],
        )
    return ImportTopic(id=topic.id, key=topic.key, kind=TopicKind(topic.kind))


def _masked_cell(text: str) -> str:
    return mask_address(text) if "@" in text else (text[:1] + "•••" if text else "")


def run_import(
    database: Database,
    binary: IO[bytes],
    request: ImportRequest,
    *,
    sha256: str,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> ImportReport:
    """Import a file into the topic, one transaction per `batch_size` rows.

    A batch is all-or-nothing. After a batch fails the import stops (rows after it are not
    read), so a file never lands with a hole in the middle; the report says which batches
    committed. Running the same file again changes nothing that already landed.
    """
    topic = find_import_topic(database, request.topic)
    text = open_text(binary)
    try:
        return _run(database, text, request, topic, sha256=sha256, on_batch=on_batch)
    finally:
        # The caller's file stays open: the text wrapper would close it when collected.
        text.detach()


def _run(
    database: Database,
    text: TextIO,
    request: ImportRequest,
    topic: ImportTopic,
    *,
    sha256: str,
    on_batch: Callable[[BatchReport], None] | None,
) -> ImportReport:
    fmt, rows = read_rows(text, fmt=request.format, file_name=request.file_name)
    started = utcnow()
    report = ImportReport(
        topic=topic.key,
        source=request.name,
        format=fmt,
        file_name=request.file_name,
        sha256=sha256,
        dry_run=request.dry_run,
        complete=True,
        rows=0,
    )
    evidence = {
        "import": request.name,
        "file": request.file_name,
        "sha256": sha256,
        "format": fmt.value,
    }
    for number, batch in enumerate(_batches(rows, request.batch_size), start=1):
        tally = _Tally()
        report.rows += len(batch)
        try:
            with database.transaction(write=not request.dry_run) as session:
                _apply_batch(session, batch, topic, request, tally, evidence, started=started)
        except (Problem, SQLAlchemyError) as exc:
            result = _batch_report(number, batch, tally, BatchStatus.FAILED, error=_why(exc))
            report.batches.append(result)
            # Broken rows are a fact of the file, whatever became of the batch.
            _merge_sample(report.invalid, tally.invalid)
            report.failed_rows += len(batch) - tally.invalid.count
            report.complete = False
            if on_batch is not None:
                on_batch(result)
            break
        status = BatchStatus.DRY_RUN if request.dry_run else BatchStatus.COMMITTED
        result = _batch_report(number, batch, tally, status)
        report.batches.append(result)
        _merge(report, tally)
        if on_batch is not None:
            on_batch(result)
    if not request.dry_run:
        with database.transaction(write=True) as session:
            queue_inline_delivery(
                session,
                event_type=EventType.IMPORT_FINISHED,
                data=finished_data(report, actor=request.actor),
                now=utcnow(),
            )
    return report


def finished_data(report: ImportReport, *, actor: str) -> dict[str, Any]:
    """The `data` of an `import.finished` delivery: the report's counts, without its sample
    rows (masked addresses) and batches."""
    data = report.model_dump(
        mode="json",
        exclude={"batches", *_SAMPLED},
    )
    for name in _SAMPLED:
        data[name] = getattr(report, name).count
    data["batches"] = len(report.batches)
    data["actor"] = actor
    return data


def _why(exc: Exception) -> str:
    """What made a batch fail, with the database's own words when there are some."""
    cause = exc.__cause__ if isinstance(exc, Problem) else exc
    orig = getattr(cause, "orig", None)
    if orig is None:
        return str(exc)
    return f"{exc if isinstance(exc, Problem) else type(orig).__name__}: {orig}".strip()


def _batches(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    while batch := list(itertools.islice(rows, size)):
        yield batch


def _batch_report(
    number: int, batch: list[Row], tally: _Tally, status: BatchStatus, error: str | None = None
) -> BatchReport:
    return BatchReport(
        number=number,
        first_line=batch[0].line,
        last_line=batch[-1].line,
        rows=len(batch),
        applied=tally.applied if status is not BatchStatus.FAILED else 0,
        status=status,
        error=error,
    )


def _merge_sample(into: CountWithSample, part: CountWithSample) -> None:
    into.count += part.count
    into.sample.extend(part.sample[: max(0, SAMPLE_SIZE - len(into.sample))])


def _merge(report: ImportReport, tally: _Tally) -> None:
    report.applied.subscribed += tally.subscribed
    report.applied.unsubscribed += tally.unsubscribed
    report.unchanged += tally.unchanged
    report.duplicates += tally.duplicates
    for name in _SAMPLED:
        _merge_sample(getattr(report, name), getattr(tally, name))


def _apply_batch(
    session: Session,
    batch: list[Row],
    topic: ImportTopic,
    request: ImportRequest,
    tally: _Tally,
    evidence: dict[str, Any],
    *,
    started: datetime,
) -> None:
    """Decide every row of the batch in file order against the state the rows before it
    left, then write the final subscriptions and one audit event per applied row."""
    now = utcnow()
    good = _valid_rows(batch, tally)
    erased, stored = _read_batch(session, good, topic, dry_run=request.dry_run, now=now)
    states: dict[str, ContactState] = {}
    writes: dict[int, staging.SubscriptionWrite] = {}
    events: list[tuple[str, str]] = []  # (event id, contact id), in the order appended
    seen: set[str] = set()
    for row in good:
        address = row.address.normalised
        if address in seen:
            tally.duplicates += 1
        seen.add(address)
        contact = stored.get(address)
        if address in erased:
            state = ContactState(erased=True, suppression=None, subscription=None)
        else:
            state = states.get(address) or (contact.state if contact else NEW_CONTACT)
        decided = decide_row(
            state,
            row.status,
            row.occurred_at or started,
            topic_kind=topic.kind,
            now=now,
            with_evidence=row.evidence is not None,
        )
        _count(tally, row.line, mask_address(address), decided.outcome)
        if not decided.applied or decided.decision is None:
            continue
        states[address] = state = state_after(state, decided)
        if request.dry_run:
            continue
        assert contact is not None
        assert state.subscription is not None
        event = _event(row, decided.decision, contact.public_id, topic, request, evidence, started)
        writes[contact.id] = staging.SubscriptionWrite(
            contact_id=contact.id,
            status=state.subscription.status,
            occurred_at=state.subscription.occurred_at,
            by_recipient=state.subscription.by_recipient,
            event_id=append_event(session, event),
        )
        events.append((event.id, contact.public_id))
    if not request.dry_run:
        staging.write_subscriptions(
            session, list(writes.values()), topic_id=topic.id, source=IMPORT_SOURCE, now=now
        )
        queue_many_deliveries(session, events, event_type=EventType.CONSENT_CHANGED, now=now)


def _valid_rows(batch: list[Row], tally: _Tally) -> list[ImportRow]:
    good: list[ImportRow] = []
    for row in batch:
        if isinstance(row, BrokenRow):
            tally.invalid.add(row.line, _masked_cell(row.email), row.problem)
        else:
            good.append(row)
    return good


def _read_batch(
    session: Session, rows: list[ImportRow], topic: ImportTopic, *, dry_run: bool, now: datetime
) -> tuple[set[str], dict[str, staging.StoredContact]]:
    """The batch's erased addresses, and its other addresses' contacts with their state:
    created where missing and locked (unless a dry run, which writes nothing)."""
    given: dict[str, str] = {}
    for row in rows:
        given.setdefault(row.address.normalised, row.address.given)
    # Before any contact is created: an erased address must not be stored again.
    erased = erased_among(session, AuditKeys.from_settings(settings_of_session(session)), given)
    staging.stage_addresses(
        session,
        [(a, display, new_public_id()) for a, display in given.items() if a not in erased],
    )
    if not dry_run:
        staging.lock_imports(session)
        staging.create_contacts(session, now=now)
    stored = staging.read_states(session, topic_id=topic.id, lock=not dry_run)
    staging.drop_staging(session)
    return erased, stored


def _count(tally: _Tally, line: int, masked: str, outcome: RowOutcome) -> None:
    match outcome:
        case RowOutcome.SUBSCRIBED:
            tally.subscribed += 1
        case RowOutcome.UNSUBSCRIBED:
            tally.unsubscribed += 1
        case RowOutcome.UNCHANGED:
            tally.unchanged += 1
        case RowOutcome.SUPERSEDED:
            tally.superseded.add(line, masked)
        case RowOutcome.REFUSED_REVERSAL:
            tally.refused_reversal.add(line, masked)
        case RowOutcome.REFUSED_ERASED:
            tally.refused_erased.add(line, masked)
        case RowOutcome.REFUSED_NO_EVIDENCE:
            tally.refused_no_evidence.add(line, masked)


def _event(
    row: ImportRow,
    decision: Decision,
    contact_id: str,
    topic: ImportTopic,
    request: ImportRequest,
    evidence: dict[str, Any],
    started: datetime,
) -> NewEvent:
    """The row's audit event, as the ledger writes every consent change's
    (consent.ledger.changes.change_event)."""
    return change_event(
        event_id=new_event_id(),
        contact_id=contact_id,
        address=row.address.normalised,
        topic_key=topic.key,
        requested=requested_change(row.status, row.occurred_at or started),
        record=ChangeRecord(
            actor=request.actor,
            source=IMPORT_SOURCE,
            evidence={**evidence, "line": row.line}
            | ({"row_evidence": row.evidence} if row.evidence is not None else {}),
            context=request.context,
        ),
        decision=decision,
    )
