"""Owns `/v1/eligibility/stream`: reading a body of any size line by line as it arrives and
answering it as CSV in input order, chunk by chunk, in bounded memory.

The hot path of the service (millions of addresses a call), so per address it does only what it
must: the fast normalisation, one dict lookup for the answer, one string concatenation. Chunks
are pipelined: while one chunk is answered in a worker thread (its query mostly waiting on the
database), the next is read from the body; at most `_IN_FLIGHT` chunks exist at once.

Fail safe: if anything fails mid-stream the iterator raises, cutting the answer short: the rows
sent before stand, no row after is ever sent, and nothing is answered "allowed" because of it.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
from collections import deque
from collections.abc import AsyncIterator, Iterable
from datetime import datetime

import anyio

from prefcenter.audit.keys import AuditKeys
from prefcenter.contacts.addresses import _fast_normalise
from prefcenter.csv_cells import FORMULA_STARTS, spreadsheet_safe
from prefcenter.db import Database
from prefcenter.eligibility.lookup import StateTable, read_erased, read_states
from prefcenter.eligibility.rules import Eligibility, decide_eligibility
from prefcenter.eligibility.schemas import STREAM_HEADER
from prefcenter.eligibility.service import (
    TopicRef,
    find_topic_ref,
    normalise_slowly,
)
from prefcenter.metrics import count_eligibility_addresses
from prefcenter.problems import Problem, Unprocessable
from prefcenter.topics.errors import TopicNotFound

# Addresses per chunk: one query and one thread hop each. 20,000 keeps the per-chunk overhead
# (a transaction, a round trip, a hop) under 5% and a chunk's text in a few megabytes.
STREAM_CHUNK = 20_000
# Chunks being answered at once: one waiting on the database while the next is prepared.
_IN_FLIGHT = 2
# A line longer than this is no address (RFC 5321 allows 254 octets): only its start is kept,
# so that a body without line breaks cannot grow memory.
_MAX_LINE = 4_096
_CSV_TYPES = frozenset({"text/csv"})
_PLAIN_TYPES = frozenset({"text/plain", ""})
# What a cell can start with that a spreadsheet reads as a formula (a fast-path address never
# needs CSV quoting, so the prefix is all it can need).
_FAST_FORMULA_STARTS = frozenset(FORMULA_STARTS)
_CSV_SPECIAL = frozenset(',"\r\n')


class UnsupportedMediaType(Problem):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class MissingEmailColumn(Unprocessable):
    slug = "missing-email-column"
    title = "The CSV has no `email` column"


def _find_topic_ref(database: Database, key: str, *, now: datetime) -> TopicRef | None:
    with database.transaction(write=False) as session:
        return find_topic_ref(session, key, now=now)


async def require_topic(database: Database, key: str, *, now: datetime) -> TopicRef:
    """The stream's topic, checked before anything is streamed: unknown is a 404."""
    async with database.session_slots:
        topic = await anyio.to_thread.run_sync(lambda: _find_topic_ref(database, key, now=now))
    if topic is None:
        raise TopicNotFound(f"There is no topic {key!r}.")
    return topic


def is_csv(content_type: str | None) -> bool:
    """Whether the body is CSV (else one address per line); refuses other media types."""
    media_type = (content_type or "").partition(";")[0].strip().lower()
    if media_type in _CSV_TYPES:
        return True
    if media_type in _PLAIN_TYPES:
        return False
    raise UnsupportedMediaType(
        f"Send `text/plain` (one address per line) or `text/csv` with an `email` column, "
        f"not {media_type!r}."
    )


# --- reading the body ------------------------------------------------------------------------


async def _line_batches(chunks: AsyncIterator[bytes]) -> AsyncIterator[list[str]]:
    """The body's lines as they arrive (UTF-8, a BOM dropped, bad bytes replaced)."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
    tail = ""
    async for chunk in chunks:
        lines = (tail + decoder.decode(chunk)).split("\n")
        tail = lines.pop()[:_MAX_LINE]
        if lines:
            yield lines
    last = tail + decoder.decode(b"", final=True)
    if last:
        yield [last]


def _plain_addresses(lines: Iterable[str]) -> list[str]:
    return [stripped for line in lines if (stripped := line.strip())]


def _csv_addresses(lines: Iterable[str], column: int) -> list[str]:
    addresses = []
    for row in csv.reader(lines):
        if not any(cell.strip() for cell in row):
            continue
        addresses.append(row[column].strip() if column < len(row) else "")
    return addresses


def _email_column(header: str) -> int:
    cells = next(csv.reader([header]), [])
    for index, cell in enumerate(cells):
        if cell.strip().lower() == "email":
            return index
    raise MissingEmailColumn(
        "The first line of a `text/csv` body must be a header naming an `email` column."
    )


async def _address_chunks(
    first: list[str], batches: AsyncIterator[list[str]], *, csv_body: bool, column: int
) -> AsyncIterator[list[str]]:
    """The body's addresses (empty lines skipped) in chunks of `STREAM_CHUNK`, the last short."""

    def addresses_of(lines: list[str]) -> list[str]:
        return _csv_addresses(lines, column) if csv_body else _plain_addresses(lines)

    pending = addresses_of(first)
    async for lines in batches:
        pending.extend(addresses_of(lines))
        while len(pending) >= STREAM_CHUNK:
            yield pending[:STREAM_CHUNK]
            del pending[:STREAM_CHUNK]
    if pending:
        yield pending


# --- answering -------------------------------------------------------------------------------


def _csv_row_end(answer: Eligibility) -> str:
    return f",{'true' if answer.allowed else 'false'},{answer.reason.value}\r\n"


def csv_cell(text: str) -> str:
    """`text` as one CSV cell, spreadsheet-safe, quoted as Python's csv module quotes it."""
    cell = spreadsheet_safe(text)
    if _CSV_SPECIAL.isdisjoint(cell):
        return cell
    return '"' + cell.replace('"', '""') + '"'


class _Answers:
    """A topic's CSV row ends, per state (see lookup.StateTable), for an erased address and
    for an invalid line; and the keys that find erased addresses."""

    def __init__(self, topic: TopicRef, keys: AuditKeys) -> None:
        self.topic_id = topic.id
        self.reconsent = topic.reconsent
        self.keys = keys
        self.by_state = StateTable(topic.model, _csv_row_end)
        self.erased = _csv_row_end(
            decide_eligibility(
                topic.model, erased=True, suppressed=False, subscription=None, bounced=False
            )
        )
        self.invalid = ",false,invalid_email\r\n"


def answer_chunk(database: Database, answers: _Answers, texts: list[str]) -> bytes:
    """A chunk's CSV rows, in order, from one query in a short read transaction of its own."""
    fast = [_fast_normalise(text) for text in texts]
    normalised = [
        address if address is not None else normalise_slowly(text)
        for address, text in zip(fast, texts, strict=True)
    ]
    wanted = {address for address in normalised if address is not None}
    with database.transaction(write=False) as session:
        connection = session.connection()
        found = read_states(
            connection, answers.topic_id, wanted, answers.by_state, answers.reconsent
        )
        # Every address, not only those no contact has: an erased address is suppressed for
        # good even if a contact row came back for it (one written before that was refused).
        for address in read_erased(connection, answers.keys, wanted):
            found[address] = answers.erased
    unknown, invalid = answers.by_state.unknown, answers.invalid
    rows: list[str] = []
    append = rows.append
    for text, fast_address, slow_address in zip(texts, fast, normalised, strict=True):
        if fast_address is not None:
            # The fast path vouched for the text: plain ASCII that needs no CSV quoting.
            cell = "'" + text if text[0] in _FAST_FORMULA_STARTS else text
            append(cell + found.get(fast_address, unknown))
        elif slow_address is None:
            append(csv_cell(text) + invalid)
        else:
            append(csv_cell(text) + found.get(slow_address, unknown))
    return "".join(rows).encode()


async def _answer_in_thread(database: Database, answers: _Answers, texts: list[str]) -> bytes:
    # A session slot, as every request transaction takes one
    # (see request_sessions._request_transaction).
    async with database.session_slots:
        answered = await anyio.to_thread.run_sync(answer_chunk, database, answers, texts)
    count_eligibility_addresses("stream", len(texts))
    return answered


async def open_stream(
    database: Database,
    topic: TopicRef,
    body: AsyncIterator[bytes],
    *,
    csv_body: bool,
    keys: AuditKeys,
) -> AsyncIterator[bytes]:
    """Read a CSV body's header (a 422 if it names no `email` column) and return the answer:
    an async iterator of CSV bytes, one row per address in input order, produced chunk by
    chunk while the body is still arriving. Empty lines are skipped, not answered."""
    batches = _line_batches(body)
    first: list[str] = []
    column = 0
    if csv_body:
        first = await anext(batches, [])
        if first:
            column = _email_column(first[0])
            first = first[1:]
    chunks = _address_chunks(first, batches, csv_body=csv_body, column=column)
    return _answer_stream(database, _Answers(topic, keys), chunks)


async def _answer_stream(
    database: Database, answers: _Answers, chunks: AsyncIterator[list[str]]
) -> AsyncIterator[bytes]:
    yield (",".join(STREAM_HEADER) + "\r\n").encode()
    # Tasks, not awaits, so that the next chunk is read while this one is answered; they are
    # awaited (and their rows sent) strictly in order.
    in_flight: deque[asyncio.Task[bytes]] = deque()
    try:
        async for texts in chunks:
            in_flight.append(asyncio.ensure_future(_answer_in_thread(database, answers, texts)))
            if len(in_flight) >= _IN_FLIGHT:
                yield await in_flight.popleft()
        while in_flight:
            yield await in_flight.popleft()
    finally:
        # Cut short (a failure, or the client went away): nothing more is answered.
        for task in in_flight:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: the failure that matters was raised already
            task.cancel()
