"""Owns the exports' use cases: which topic an audience is of, and which path an export
takes (PostgreSQL builds the CSV itself, `ranges`; elsewhere Python writes keyset chunks)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sqlmodel import Session

from prefcenter.db import Database
from prefcenter.exports import chunks, ranges
from prefcenter.exports.schemas import AUDIENCE_HEADER, SUPPRESSIONS_HEADER
from prefcenter.topics.models import Topic
from prefcenter.topics.service import require_topic


def find_audience_topic(session: Session, key: str) -> Topic:
    """The topic, read before the answer starts so that an unknown one is a 404 problem."""
    return require_topic(session, key)


def _on_postgres(database: Database) -> bool:
    return database.engine.dialect.name == "postgresql"


def suppressions_csv(database: Database) -> AsyncIterator[bytes]:
    """`GET /v1/suppressions` as CSV bytes."""
    if _on_postgres(database):
        return ranges.suppressions_ranges(database)
    return chunks.stream_csv(database, SUPPRESSIONS_HEADER, chunks.read_suppressions)


def audience_csv(database: Database, topic: Topic) -> AsyncIterator[bytes]:
    """`GET /v1/topics/{key}/audience` as CSV bytes."""
    if _on_postgres(database):
        return ranges.audience_ranges(database, topic)
    return chunks.stream_csv(database, AUDIENCE_HEADER, chunks.audience_reader(topic))
