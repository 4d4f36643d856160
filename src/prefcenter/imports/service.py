"""Owns running an import: read the file, apply it batch by batch (each all-or-nothing in a
transaction of its own, imports.apply; on PostgreSQL two batches in flight at once,
imports.pipeline), and report what happened."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, TextIO

from sqlalchemy.exc import SQLAlchemyError

from prefcenter.audit.keys import AuditKeys
from prefcenter.collector import spaced_collections
from prefcenter.db import Database, utcnow
from prefcenter.imports.apply import (
    BatchContext,
    ImportTopic,
    Tally,
    apply_batch,
    batch_events,
)
from prefcenter.imports.formats import ImportFormat, Row, open_text, read_rows
from prefcenter.imports.pipeline import InFlight, run_two_at_a_time
from prefcenter.imports.prepare import PreparedBatch, ReadAhead, prepared_batches
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
from prefcenter.webhooks.queue import queue_inline_delivery
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
    applied: a batch already in flight is rolled back), so a file never lands with a hole in
    the middle; the report says which batches committed. Running the same file again changes
    nothing that already landed.
    """
    topic = find_import_topic(database, request.topic)
    text = open_text(binary)
    try:
        with spaced_collections():
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
    shared = BatchContext(
        topic=topic,
        actor=request.actor,
        evidence=evidence,
        context=request.context,
        started=started,
        dry_run=request.dry_run,
    )
    keys = AuditKeys.from_settings(database.settings)
    # The next batch is read and prepared while this one is written (imports.prepare).
    prepared = prepared_batches(
        rows, request.batch_size, keys=keys, events=batch_events(keys, shared)
    )
    with ReadAhead(prepared) as batches:
        if request.dry_run or database.settings.is_sqlite:
            # SQLite's writers take turns; a dry run writes nothing to overlap.
            for number, batch in enumerate(batches, start=1):
                if not _apply(database, request, report, shared, number, batch, on_batch):
                    break
        else:

            def record(flight: InFlight) -> bool:
                return _record(
                    request,
                    report,
                    flight.number,
                    flight.batch,
                    flight.tally,
                    flight.error,
                    on_batch,
                )

            run_two_at_a_time(database, batches, shared, record)
    if not request.dry_run:
        with database.transaction(write=True) as session:
            queue_inline_delivery(
                session,
                event_type=EventType.IMPORT_FINISHED,
                data=finished_data(report, actor=request.actor),
                now=utcnow(),
            )
    return report


def _apply(
    database: Database,
    request: ImportRequest,
    report: ImportReport,
    shared: BatchContext,
    number: int,
    batch: PreparedBatch,
    on_batch: Callable[[BatchReport], None] | None,
) -> bool:
    """Apply one batch in a transaction of its own and add it to the report; False when it
    failed (and the import stops)."""
    tally = Tally()
    error: Problem | SQLAlchemyError | None = None
    try:
        with database.transaction(write=not request.dry_run) as session:
            apply_batch(session, batch, shared, tally)
    except (Problem, SQLAlchemyError) as exc:
        error = exc
    return _record(request, report, number, batch, tally, error, on_batch)


def _record(
    request: ImportRequest,
    report: ImportReport,
    number: int,
    batch: PreparedBatch,
    tally: Tally,
    error: Problem | SQLAlchemyError | None,
    on_batch: Callable[[BatchReport], None] | None,
) -> bool:
    """Add a batch that committed (`error` None) or failed to the report; False when it
    failed (and the import stops)."""
    rows = batch.rows
    report.rows += len(rows)
    if error is not None:
        result = _batch_report(number, rows, tally, BatchStatus.FAILED, error=_why(error))
        report.batches.append(result)
        # Broken rows are a fact of the file, whatever became of the batch.
        _merge_sample(report.invalid, tally.invalid)
        report.failed_rows += len(rows) - tally.invalid.count
        report.complete = False
        if on_batch is not None:
            on_batch(result)
        return False
    status = BatchStatus.DRY_RUN if request.dry_run else BatchStatus.COMMITTED
    result = _batch_report(number, rows, tally, status)
    report.batches.append(result)
    _merge(report, tally)
    if on_batch is not None:
        on_batch(result)
    return True


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


def _batch_report(
    number: int, batch: list[Row], tally: Tally, status: BatchStatus, error: str | None = None
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


def _merge(report: ImportReport, tally: Tally) -> None:
    report.applied.subscribed += tally.subscribed
    report.applied.unsubscribed += tally.unsubscribed
    report.unchanged += tally.unchanged
    report.duplicates += tally.duplicates
    for name in _SAMPLED:
        _merge_sample(getattr(report, name), getattr(tally, name))
