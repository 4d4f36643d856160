"""Owns the CSV export of a run the team sends itself: one row per recipient not erased, with
what the team needs to write the mail (address, language, the person's preference link) and
where the delivery stands. Streamed in keyset chunks, each read in a short transaction of its
own, every cell spreadsheet-safe."""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import anyio

from prefcenter.csv_cells import spreadsheet_safe
from prefcenter.db import Database
from prefcenter.notices.notification import mail_language
from prefcenter.notices.team_run import recipients_since
from prefcenter.settings import SigningKey
from prefcenter.tokens import TokenClaims, TokenPurpose, preferences_url, sign_token

HEADER = ("contact_id", "email", "language", "notice", "effective_at", "preferences_url", "status")
CHUNK_ROWS = 5000


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What every row of the run shares."""

    ref: str  # `<key>@<version>`
    version_id: int
    language: str
    effective_at: str  # RFC 3339, UTC
    published_at: datetime  # the links' issue time: the same links on every export


def csv_bytes(rows: Sequence[Sequence[str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerows(tuple(spreadsheet_safe(cell) for cell in row) for row in rows)
    return buffer.getvalue().encode("utf-8")


def _chunk(
    database: Database,
    facts: RunFacts,
    *,
    base_url: str,
    ring: tuple[SigningKey, ...],
    after_id: int,
) -> tuple[list[tuple[str, ...]], int | None]:
    with database.transaction(write=False) as session:
        found = recipients_since(
            session, version_id=facts.version_id, after_id=after_id, limit=CHUNK_ROWS
        )
    language = mail_language(facts.language)
    suffix = "" if language == "en" else f"?lang={language}"
    rows: list[tuple[str, ...]] = []
    for _, public_id, address, status in found:
        token = sign_token(
            ring,
            TokenPurpose.MANAGE,
            TokenClaims(
                contact_id=public_id, topic=None, campaign_id=None, issued_at=facts.published_at
            ),
        )
        link = preferences_url(base_url, token) + suffix
        rows.append(
            (public_id, address, facts.language, facts.ref, facts.effective_at, link, status)
        )
    last = int(found[-1][0]) if len(found) == CHUNK_ROWS else None
    return rows, last


async def stream_run(
    database: Database, facts: RunFacts, *, base_url: str, ring: tuple[SigningKey, ...]
) -> AsyncIterator[bytes]:
    """The header, then the recipients by contact; each chunk waits for a session slot like a
    request's transaction."""
    yield csv_bytes([HEADER])
    after_id = 0
    while True:
        async with database.session_slots:
            rows, last = await anyio.to_thread.run_sync(
                functools.partial(
                    _chunk, database, facts, base_url=base_url, ring=ring, after_id=after_id
                )
            )
        if rows:
            yield csv_bytes(rows)
        if last is None:
            return
        after_id = last
