"""Owns answering eligibility: who may be emailed about a topic, with a reason per address.

Set-based: one query per chunk of thousands of addresses (contact LEFT JOIN the topic's
subscription LEFT JOIN suppression), never one per address. Fail safe: a database error fails
the request (or cuts the stream short); nothing is ever answered "allowed" because of one.
"""

from __future__ import annotations

import codecs
import csv
import io
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

import anyio
from sqlalchemy import ARRAY, Connection, String, and_, any_, bindparam, select
from sqlmodel import Session, col

from prefcenter.consent.models import Subscription, Suppression
from prefcenter.consent.rules import Status
from prefcenter.contacts.addresses import InvalidAddress, _fast_normalise, parse_address
from prefcenter.contacts.models import Contact
from prefcenter.db import Database
from prefcenter.eligibility.csv_cells import spreadsheet_safe
from prefcenter.eligibility.rules import (
    INVALID_EMAIL,
    UNKNOWN_TOPIC,
    Eligibility,
    TopicModel,
    decide_eligibility,
)
from prefcenter.eligibility.schemas import (
    MAX_ELIGIBILITY,
    STREAM_HEADER,
    EligibilityIn,
    EligibilityOut,
    EligibilityResult,
)
from prefcenter.problems import PayloadTooLarge, Problem, Unprocessable
from prefcenter.topics.errors import TopicNotFound
from prefcenter.topics.schemas import ConsentModel, TopicKind
from prefcenter.topics.service import find_topic

# Addresses per stream chunk: one query and one thread hop each, few enough to keep memory flat.
STREAM_CHUNK = 5_000
# Addresses per query. SQLite binds each as a parameter: stay under its limit (32,766 since
# 3.32, 999 before), one parameter being the topic.
_QUERY_CHUNK = 10_000 if sqlite3.sqlite_version_info >= (3, 32, 0) else 900
# A line longer than this is no address (RFC 5321 allows 254 octets): only its start is kept,
# so that a body without line breaks cannot grow memory.
_MAX_LINE = 4_096
_CSV_TYPES = frozenset({"text/csv"})
_PLAIN_TYPES = frozenset({"text/plain", ""})


class UnsupportedMediaType(Problem):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class MissingEmailColumn(Unprocessable):
    slug = "missing-email-column"
    title = "The CSV has no `email` column"


@dataclass(frozen=True, slots=True)
class TopicRef:
    id: int
    model: TopicModel


@dataclass(frozen=True, slots=True)
class _State:
    status: Status | None
    suppressed: bool


def find_topic_ref(session: Session, key: str) -> TopicRef | None:
    topic = find_topic(session, key)
    if topic is None or topic.id is None:
        return None
    return TopicRef(
        id=topic.id,
        model=TopicModel(kind=TopicKind(topic.kind), consent=ConsentModel(topic.consent)),
    )


def _normalise(text: str) -> str | None:
    """The normalised address, or None when the text is none.

    U+FFFD is what undecodable bytes became: no mailbox, though email-validator admits it."""
    fast = _fast_normalise(text)
    if fast is not None:
        return fast
    if "\ufffd" in text:
        return None
    try:
        return parse_address(text).normalised
    except InvalidAddress:
        return None


def _read_states(connection: Connection, topic_id: int, addresses: list[str]) -> dict[str, _State]:
    """The stored state of each known address, one query per `_QUERY_CHUNK` of them."""
    if connection.dialect.name == "postgresql":
        # One array parameter: the statement is the same whatever the chunk's size.
        match = col(Contact.address) == any_(bindparam("addresses", type_=ARRAY(String)))
    else:
        match = col(Contact.address).in_(bindparam("addresses", expanding=True))
    query = (
        select(col(Contact.address), col(Subscription.status), col(Suppression.suppressed))
        .select_from(Contact)
        .outerjoin(
            Subscription,
            and_(
                col(Subscription.contact_id) == col(Contact.id),
                col(Subscription.topic_id) == bindparam("topic_id"),
            ),
        )
        .outerjoin(Suppression, col(Suppression.contact_id) == col(Contact.id))
        .where(match)
    )
    states: dict[str, _State] = {}
    for start in range(0, len(addresses), _QUERY_CHUNK):
        chunk = addresses[start : start + _QUERY_CHUNK]
        for address, status, suppressed in connection.execute(
            query, {"addresses": chunk, "topic_id": topic_id}
        ):
            states[str(address)] = _State(
                status=Status(status) if status is not None else None,
                suppressed=bool(suppressed),
            )
    return states


def decide_addresses(
    session: Session, topic: TopicRef | None, emails: Sequence[str]
) -> list[Eligibility]:
    """One answer per text, in order; duplicates each get the same answer."""
    if topic is None:
        return [UNKNOWN_TOPIC] * len(emails)
    normalised = [_normalise(text) for text in emails]
    wanted = sorted({n for n in normalised if n is not None})
    states = _read_states(session.connection(), topic.id, wanted) if wanted else {}
    answers: list[Eligibility] = []
    for address in normalised:
        if address is None:
            answers.append(INVALID_EMAIL)
            continue
        state = states.get(address)
        answers.append(
            decide_eligibility(
                topic.model,
                # Erasure is not built yet; erased contacts have no address, so never match.
                erased=False,
                suppressed=state is not None and state.suppressed,
                subscription=state.status if state is not None else None,
            )
        )
    return answers


def check_eligibility(session: Session, query: EligibilityIn) -> EligibilityOut:
    if len(query.emails) > MAX_ELIGIBILITY:
        raise PayloadTooLarge(
            f"At most {MAX_ELIGIBILITY:,} addresses per call, not {len(query.emails):,}; "
            "use /v1/eligibility/stream for more."
        )
    answers = decide_addresses(session, find_topic_ref(session, query.topic), query.emails)
    return EligibilityOut(
        results=[
            EligibilityResult(email=text, allowed=answer.allowed, reason=answer.reason)
            for text, answer in zip(query.emails, answers, strict=True)
        ]
    )


# --- the stream ----------------------------------------------------------------------------


def _find_topic_ref(database: Database, key: str) -> TopicRef | None:
    with database.transaction(write=False) as session:
        return find_topic_ref(session, key)


async def require_topic(database: Database, key: str) -> TopicRef:
    """The stream's topic, checked before anything is streamed: unknown is a 404."""
    async with database.session_slots:
        topic = await anyio.to_thread.run_sync(_find_topic_ref, database, key)
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


def _answer_chunk(database: Database, topic: TopicRef, addresses: list[str]) -> bytes:
    """A chunk's CSV rows, from a short read transaction of its own."""
    with database.transaction(write=False) as session:
        answers = decide_addresses(session, topic, addresses)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerows(
        (spreadsheet_safe(text), "true" if answer.allowed else "false", answer.reason.value)
        for text, answer in zip(addresses, answers, strict=True)
    )
    return out.getvalue().encode()


async def open_stream(
    database: Database, topic: TopicRef, body: AsyncIterator[bytes], *, csv_body: bool
) -> AsyncIterator[bytes]:
    """Read a CSV body's header (a 422 if it names no `email` column) and return the answer:
    an async iterator of CSV bytes, one row per address in input order, produced chunk by
    chunk while the body is still arriving. Empty lines are skipped, not answered.

    If the database fails mid-stream the iterator raises, cutting the answer short: the rows
    sent before stand, no row after is ever sent.
    """
    batches = _line_batches(body)
    first: list[str] = []
    column = 0
    if csv_body:
        first = await anext(batches, [])
        if first:
            column = _email_column(first[0])
            first = first[1:]
    return _answer_stream(database, topic, first, batches, csv_body=csv_body, column=column)


async def _answer_stream(
    database: Database,
    topic: TopicRef,
    first: list[str],
    batches: AsyncIterator[list[str]],
    *,
    csv_body: bool,
    column: int,
) -> AsyncIterator[bytes]:
    out = io.StringIO()
    csv.writer(out).writerow(STREAM_HEADER)
    yield out.getvalue().encode()

    def addresses_of(lines: list[str]) -> list[str]:
        return _csv_addresses(lines, column) if csv_body else _plain_addresses(lines)

    pending = addresses_of(first)
    async for lines in batches:
        pending.extend(addresses_of(lines))
        while len(pending) >= STREAM_CHUNK:
            chunk, pending = pending[:STREAM_CHUNK], pending[STREAM_CHUNK:]
            yield await _answer_in_thread(database, topic, chunk)
    if pending:
        yield await _answer_in_thread(database, topic, pending)


async def _answer_in_thread(database: Database, topic: TopicRef, addresses: list[str]) -> bytes:
    # A session slot, as every request transaction takes one (see db._request_transaction).
    async with database.session_slots:
        return await anyio.to_thread.run_sync(_answer_chunk, database, topic, addresses)
