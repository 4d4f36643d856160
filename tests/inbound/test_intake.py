"""inbound.intake on both engines: which receipts are new, which contacts the new events name
(none erased, none created), their bounce rows; and on PostgreSQL, a delivery taken in twice
at once claims once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from sqlmodel import select

from prefcenter.audit.keys import AuditKeys
from prefcenter.bounces.models import Bounce
from prefcenter.consent.models import ErasedAddress
from prefcenter.contacts.addresses import parse_address
from prefcenter.contacts.models import Contact
from prefcenter.contacts.service import lock_contact
from prefcenter.db import Database
from prefcenter.inbound.events import MAX_EVIDENCE_TEXT, Action, InboundEvent, Provider, text_of
from prefcenter.inbound.intake import Intake, take_in
from prefcenter.settings import Settings

NOW = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


def _event(receipt: str, address: str, action: Action = Action.HARD_BOUNCE) -> InboundEvent:
    return InboundEvent(Provider.SENDGRID, receipt, action, address, NOW)


def _contacts(database: Database, *emails: str) -> dict[str, int]:
    ids: dict[str, int] = {}
    with database.transaction(write=True) as session:
        for email in emails:
            contact = lock_contact(session, parse_address(email), now=NOW)
            assert contact.id is not None
            ids[email] = contact.id
    return ids


def _take_in(database: Database, settings: Settings, *events: InboundEvent) -> Intake:
    keys = AuditKeys.from_settings(settings)
    with database.transaction(write=True) as session:
        return take_in(session, keys, [(e, e.address) for e in events], now=NOW)


def test_new_receipts_name_known_contacts_only_with_their_bounce_rows(
    database: Database, settings: Settings
) -> None:
    ids = _contacts(database, "ada@example.com", "bob@example.com", "eve@example.com")
    keys = AuditKeys.from_settings(settings)
    with database.transaction(write=True) as session:
        session.add(
            Bounce(
                contact_id=ids["bob@example.com"],
                bounced=True,
                occurred_at=NOW,
                since=NOW,
                source="ses",
                event_id="evt_1",
            )
        )
        # An address erased and kept only as its keyed hash, though a row still has it.
        session.add(ErasedAddress(address_hash=keys.address_hash("eve@example.com"), erased_at=NOW))
    seen = _take_in(database, settings, _event("seen", "ada@example.com"))
    assert seen.claimed == {_event("seen", "ada@example.com").receipt_key}
    intake = _take_in(
        database,
        settings,
        _event("seen", "ada@example.com"),  # its receipt was claimed: its contact is not asked
        _event("one", "bob@example.com"),
        _event("two", "eve@example.com"),
        _event("three", "nobody@example.com"),
    )
    assert intake.claimed == {_event(r, "").receipt_key for r in ("one", "two", "three")}
    assert set(intake.contacts) == {"bob@example.com"}
    bob = intake.contacts["bob@example.com"]
    assert bob.id == ids["bob@example.com"]
    assert bob.bounce is not None
    assert (bob.bounce.bounced, bob.bounce.event_id, bob.bounce.occurred_at) == (True, "evt_1", NOW)
    with database.transaction(write=False) as session:
        assert len(session.exec(select(Contact)).all()) == 3


def test_a_delivery_taken_in_twice_at_once_is_claimed_once(
    database: Database, settings: Settings
) -> None:
    """PostgreSQL: the second waits for the first's transaction, then finds its receipts
    taken and locks nothing (SQLite's writer excludes the other from BEGIN)."""
    _contacts(database, "ada@example.com")
    event = _event("twice", "ada@example.com")
    keys = AuditKeys.from_settings(settings)
    results: list[Intake] = []

    def second() -> None:
        results.append(_take_in(database, settings, event))

    with database.transaction(write=True) as session:
        first = take_in(session, keys, [(event, event.address)], now=NOW)
        if settings.is_sqlite:
            thread = None
        else:
            thread = threading.Thread(target=second)
            thread.start()
    if thread is None:
        second()
    else:
        thread.join()
    assert first.claimed == {event.receipt_key}
    assert set(first.contacts) == {"ada@example.com"}
    assert results[0].claimed == set()
    assert results[0].contacts == {}


def test_evidence_text_is_printable_and_short() -> None:
    assert text_of("550 5.1.1 <jane@example.com>... User unknown") == (
        "550 5.1.1 <jane@example.com>... User unknown"
    )
    assert text_of("line\r\nnext\x00\x1b[31m") == "line  next  [31m"
    assert text_of("x" * (MAX_EVIDENCE_TEXT + 5)) == "x" * MAX_EVIDENCE_TEXT
    assert text_of("\x07" * (MAX_EVIDENCE_TEXT + 5)) == " " * MAX_EVIDENCE_TEXT
    assert text_of(42) == "42"
    assert text_of(None) is None
    assert text_of({"nested": 1}) is None
