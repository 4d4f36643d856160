"""Owns `GET /v1/audit/export`: the matching events streamed as CSV or JSON Lines.

Streamed in keyset chunks by `seq`, each read in a short transaction of its own in a worker
thread, so memory stays bounded by one chunk and no snapshot is held open for the length of a
download. Events are append-only and a reader sees every event up to some `seq` (see
`audit.service.append_event`), so the export is every matching event up to the moment its last
chunk was read: nothing skipped, nothing twice.

CSV cells go through `spreadsheet_safe` (CSV/formula injection): a reader drops one `'` that
precedes `= + - @`, TAB or CR. `evidence` and `context` are compact JSON in one cell each.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

import anyio
import orjson

from prefcenter.audit.canonical import QUERY_COLUMNS
from prefcenter.audit.queries import EventQuery, read_page
from prefcenter.audit.query_schemas import ExportFormat
from prefcenter.audit.schemas import AuditEventOut
from prefcenter.csv_cells import spreadsheet_safe
from prefcenter.db import Database

# Events per chunk: an event's evidence may be up to 16 KiB, so a chunk stays a few MiB at most.
CHUNK_EVENTS = 1000

# The query columns in their canonical order (as `_csv_cells` writes them), then the
# personal part of the event.
CSV_HEADER = (*QUERY_COLUMNS, "evidence", "context")
MEDIA_TYPES = {
    ExportFormat.CSV: "text/csv; charset=utf-8",
    ExportFormat.JSONL: "application/jsonl; charset=utf-8",
}


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _csv_cells(event: AuditEventOut) -> tuple[str, ...]:
    def text(value: str | None) -> str:
        return "" if value is None else value

    return (
        str(event.seq),
        event.id,
        event.kind.value,
        _timestamp(event.recorded_at),
        _timestamp(event.occurred_at),
        text(event.contact_id),
        text(event.topic),
        text(event.from_status),
        text(event.to_status),
        event.outcome,
        event.actor,
        event.source,
        text(event.campaign_id),
        text(event.reason),
        orjson.dumps(event.evidence, option=orjson.OPT_SORT_KEYS).decode(),
        orjson.dumps(event.context, option=orjson.OPT_SORT_KEYS).decode(),
    )


def csv_text(rows: Sequence[tuple[str, ...]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerows(tuple(spreadsheet_safe(cell) for cell in row) for row in rows)
    return buffer.getvalue().encode("utf-8")


def _csv_chunk(events: Sequence[AuditEventOut]) -> bytes:
    return csv_text([_csv_cells(event) for event in events])


def _jsonl_chunk(events: Sequence[AuditEventOut]) -> bytes:
    return b"".join(orjson.dumps(event.model_dump(mode="json")) + b"\n" for event in events)


_ENCODERS: dict[ExportFormat, Callable[[Sequence[AuditEventOut]], bytes]] = {
    ExportFormat.CSV: _csv_chunk,
    ExportFormat.JSONL: _jsonl_chunk,
}


def _read_chunk(database: Database, query: EventQuery, after_seq: int) -> list[AuditEventOut]:
    with database.transaction(write=False) as session:
        return read_page(session, query, after_seq=after_seq, limit=CHUNK_EVENTS)


async def stream_events(
    database: Database, query: EventQuery, export_format: ExportFormat
) -> AsyncIterator[bytes]:
    """The header (CSV), then chunk after chunk until a short one. Each chunk waits for one
    of the process's session slots like a request transaction does."""
    encode = _ENCODERS[export_format]
    if export_format is ExportFormat.CSV:
        yield csv_text([CSV_HEADER])
    after_seq = 0
    while True:
        async with database.session_slots:
            events = await anyio.to_thread.run_sync(_read_chunk, database, query, after_seq)
        if events:
            yield encode(events)
        if len(events) < CHUNK_EVENTS:
            return
        after_seq = events[-1].seq
