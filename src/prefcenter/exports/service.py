"""Owns the exports' use cases: which topic an audience is of, and which path an export
takes (PostgreSQL builds the CSV itself, `ranges`; elsewhere Python writes keyset chunks)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session

from prefcenter.db import Database
from prefcenter.exports import chunks, ranges, suppression_ranges
from prefcenter.exports.schemas import AUDIENCE_HEADER, SUPPRESSIONS_HEADER
from prefcenter.notices.reconsent import reconsent_of
from prefcenter.notices.rules import Reconsent
from prefcenter.topics.models import Topic
from prefcenter.topics.service import require_topic


@dataclass(frozen=True, slots=True)
class AudienceTopic:
    topic: Topic
    # What the topic's notice asks for as the export starts (None: nothing).
    reconsent: Reconsent | None


def find_audience_topic(session: Session, key: str, *, now: datetime) -> AudienceTopic:
    """The topic, read before the answer starts so that an unknown one is a 404 problem, with
    the re-consent its notice asks for at `now`."""
    topic = require_topic(session, key)
    return AudienceTopic(topic, reconsent_of(session, topic.notice_key, now=now))


def _on_postgres(database: Database) -> bool:
    return database.engine.dialect.name == "postgresql"


def suppressions_csv(database: Database) -> AsyncIterator[bytes]:
    """`GET /v1/suppressions` as CSV bytes."""
    if _on_postgres(database):
        return suppression_ranges.suppressions_ranges(database)
    return chunks.stream_csv(database, SUPPRESSIONS_HEADER, chunks.read_suppressions)


def audience_csv(database: Database, audience: AudienceTopic) -> AsyncIterator[bytes]:
    """`GET /v1/topics/{key}/audience` as CSV bytes."""
    topic, rule = audience.topic, audience.reconsent
    if _on_postgres(database):
        return ranges.audience_ranges(database, topic, rule)
    return chunks.stream_csv(database, AUDIENCE_HEADER, chunks.audience_reader(topic, rule))
