"""Migration 0003 chains the events written before it, moves their evidence out, and goes
back down without losing any; migration 0007 leaves the events before it as they were
hashed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from prefcenter import migrations
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.reading import read_events
from prefcenter.audit.schemas import EventKind, NewEvent
from prefcenter.audit.service import append_event
from prefcenter.audit.verify import VerifyResult
from prefcenter.consent.ledger.replay import verify_ledger
from prefcenter.db import Database, UtcDateTime
from prefcenter.settings import Settings
from tests.audit.first_format import first_format_event, write_first_format_events
from tests.test_migrations import empty_settings  # noqa: F401 - the fixture

JsonDocument = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_events_0002 = sa.table(
    "audit_event",
    *[
        sa.column(name, sa.String())
        for name in ("id", "kind", "contact_id", "topic", "to_status", "outcome", "actor", "source")
    ],
    sa.column("seq", sa.BigInteger()),
    sa.column("recorded_at", UtcDateTime()),
    sa.column("occurred_at", UtcDateTime()),
    sa.column("evidence", JsonDocument),
    sa.column("context", JsonDocument),
)
_contact = sa.table(
    "contact",
    sa.column("public_id", sa.String()),
    sa.column("address", sa.String()),
    sa.column("address_display", sa.String()),
    sa.column("created_at", UtcDateTime()),
)
START = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
EVENTS = 12


def old_event(seq: int) -> dict[str, Any]:
    return {
        "seq": seq,
        "id": f"event-{seq}",
        "kind": "consent_change",
        "contact_id": "c0000000000000001",
        "topic": "news",
        "to_status": "subscribed" if seq % 2 else "unsubscribed",
        "outcome": "applied",
        "actor": "api_key:1:crm",
        "source": "api",
        "recorded_at": START + timedelta(seconds=seq),
        "occurred_at": START + timedelta(seconds=seq),
        "evidence": {"ip": "192.0.2.1", "score": seq / 4} if seq % 3 else {},
        "context": {"user_agent": "curl"} if seq % 4 else {},
    }


@pytest.fixture
def at_0002(empty_settings: Settings) -> Settings:  # noqa: F811
    migrations.upgrade(empty_settings, "0002")
    engine = sa.create_engine(empty_settings.database_url)
    with engine.begin() as connection:
        connection.execute(
            sa.insert(_contact),
            [
                {
                    "public_id": "c0000000000000001",
                    "address": "ada@example.com",
                    "address_display": "Ada@Example.com",
                    "created_at": START,
                }
            ],
        )
        connection.execute(sa.insert(_events_0002), [old_event(s) for s in range(1, EVENTS + 1)])
        connection.execute(sa.text("UPDATE audit_head SET seq = :n"), {"n": EVENTS})
    engine.dispose()
    return empty_settings


def test_existing_events_are_chained_and_keep_their_evidence(
    at_0002: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations.upgrade(at_0002)
    database = Database(at_0002)
    keys = AuditKeys.from_settings(at_0002)
    try:
        assert verify_ledger(database, keys, deep=False).ok
        with database.transaction(write=False) as session:
            events = read_events(session)
        assert [(e.evidence, e.context) for e in events] == [
            (old_event(s)["evidence"], old_event(s)["context"]) for s in range(1, EVENTS + 1)
        ]
        assert {e.seq for e in events} == set(range(1, EVENTS + 1))

        migrations.downgrade(at_0002, "0002")
        engine = sa.create_engine(at_0002.database_url)
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(_events_0002.c.evidence, _events_0002.c.context).order_by(
                    _events_0002.c.seq
                )
            ).all()
        engine.dispose()
        assert [tuple(r) for r in rows] == [
            (old_event(s)["evidence"], old_event(s)["context"]) for s in range(1, EVENTS + 1)
        ]

        migrations.upgrade(at_0002)
        assert verify_ledger(database, keys, deep=False).ok
        with database.transaction(write=False) as session:
            (address_hash,) = session.execute(
                sa.text("SELECT DISTINCT address_hash FROM audit_event")
            ).one()
        assert address_hash == keys.address_hash("ada@example.com")
    finally:
        database.dispose()


def test_first_format_events_keep_their_free_text_and_verify_after_0007(
    empty_settings: Settings,  # noqa: F811
) -> None:
    """Migration 0007 rewrites no event: those it finds keep their bytes (format 1, the free
    text in clear) and still verify beside the ones written after it. Down again only while
    no event of the new format exists."""
    migrations.upgrade(empty_settings, "0006")
    keys = AuditKeys.from_settings(empty_settings)
    write_first_format_events(
        empty_settings.database_url,
        [
            first_format_event(keys, 1, address=None, reason="asked by phone", campaign_id="c1"),
            first_format_event(keys, 2, address="ada@example.com"),
        ],
    )
    migrations.upgrade(empty_settings)
    database = Database(empty_settings)
    try:
        assert verify_ledger(database, keys).ok
        migrations.downgrade(empty_settings, "0006")  # nothing of format 2 yet
        migrations.upgrade(empty_settings)
        with database.transaction(write=True) as session:
            append_event(
                session,
                NewEvent(
                    kind=EventKind.TOPIC_CHANGE,
                    occurred_at=START,
                    actor="test",
                    source="api",
                    outcome="applied",
                    reason="renamed, ticket 7",
                ),
            )
        assert verify_ledger(database, keys) == VerifyResult(ok=True, checked=3)

        with pytest.raises(RuntimeError, match="from seq 3 on"):
            migrations.downgrade(empty_settings, "0006")

        assert verify_ledger(database, keys).ok
        with database.transaction(write=False) as session:
            events = read_events(session)
        assert [(e.reason, e.campaign_id) for e in events] == [
            ("asked by phone", "c1"),
            (None, None),
            ("renamed, ticket 7", None),
        ]
    finally:
        database.dispose()
