"""An import writes what the ledger's write model writes: the same change made by an import row
and through the API's set-based path (consent.ledger.batch, which `POST /v1/consents/batch`
runs) leaves the same subscription row and the same audit event, on both engines."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select

from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.models import AuditEvent
from prefcenter.consent.ledger.batch import BatchChange, BatchWritten, apply_changes
from prefcenter.consent.ledger.changes import ChangeRecord
from prefcenter.consent.models import Subscription
from prefcenter.consent.rules import Status
from prefcenter.contacts.addresses import parse_address
from prefcenter.contacts.models import Contact
from prefcenter.db import Database, settings_of_session, utcnow
from prefcenter.imports.rules import requested_change
from prefcenter.imports.service import ImportRequest, file_sha256, run_import
from prefcenter.topics.models import Topic
from tests.support.factories import Headers, audit_events, make_topic

TOPIC = "newsletter"
# What differs between two contacts or two moments, not between the paths.
_ROW_IDENTITY = {"contact_id", "since", "event_id"}
_EVENT_IDENTITY = {"id", "seq", "recorded_at", "contact_id"}


@pytest.fixture
def topic(client: TestClient, admin_headers: Headers) -> str:
    make_topic(client, admin_headers, TOPIC)
    return TOPIC


def _import(database: Database, address: str, status: str, occurred_at: datetime) -> str:
    """Import one row; returns the file's checksum (part of the event's evidence)."""
    data = f"email,status,occurred_at\n{address},{status},{occurred_at.isoformat()}\n".encode()
    binary = io.BytesIO(data)
    sha256 = file_sha256(binary)
    request = ImportRequest(topic=TOPIC, name="crm", actor="cli:test", file_name="people.csv")
    report = run_import(database, binary, request, sha256=sha256)
    assert report.applied.subscribed + report.applied.unsubscribed == 1
    return sha256


def _through_the_api_path(
    database: Database, address: str, status: Status, occurred_at: datetime, sha256: str
) -> None:
    """The same change through consent.ledger.batch: an operator's change from the import's
    source with the import's evidence for the same line."""
    with database.transaction(write=True) as session:
        topic = session.exec(select(Topic).where(Topic.key == TOPIC)).one()
        keys = AuditKeys.from_settings(settings_of_session(session))
        evidence = {"import": "crm", "file": "people.csv", "sha256": sha256, "format": "csv"}
        (written,) = apply_changes(
            session,
            keys,
            [
                BatchChange(
                    address=parse_address(address),
                    topic=topic,
                    requested=requested_change(status, occurred_at),
                    record=ChangeRecord(
                        actor="cli:test", source="import", evidence={**evidence, "line": 2}
                    ),
                    at=utcnow(),
                )
            ],
            now=utcnow(),
        )
        assert isinstance(written, BatchWritten)


def _row_of(database: Database, address: str) -> dict[str, Any]:
    with database.transaction(write=False) as session:
        row = session.exec(
            select(Subscription)
            .join(Contact, col(Contact.id) == col(Subscription.contact_id))
            .where(Contact.address == address)
        ).one()
        return row.model_dump()


def _event_of(database: Database, address: str) -> dict[str, Any]:
    with database.transaction(write=False) as session:
        public_id = session.exec(select(Contact.public_id).where(Contact.address == address)).one()
        count = len(
            session.exec(select(AuditEvent.seq).where(AuditEvent.contact_id == public_id)).all()
        )
    assert count == 1
    (event,) = [e for e in audit_events(database) if e.contact_id == public_id]
    return event.model_dump()


def _without(values: dict[str, Any], names: set[str]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in names}


class TestImportAndApiPathsAgree:
    @pytest.mark.parametrize("future", [False, True], ids=["in-the-past", "clamped-to-now"])
    def test_a_subscription_is_the_same_row_and_event(
        self, database: Database, topic: str, future: bool
    ) -> None:
        occurred_at = utcnow() + (timedelta(days=1) if future else -timedelta(days=3))
        occurred_at = occurred_at.replace(microsecond=0, tzinfo=UTC)

        sha256 = _import(database, "ada@example.com", "subscribed", occurred_at)
        _through_the_api_path(database, "bob@example.com", Status.SUBSCRIBED, occurred_at, sha256)

        # A time in the future is clamped to each path's own now: a moment apart.
        moment = {"occurred_at"} if future else set()
        imported, api = _row_of(database, "ada@example.com"), _row_of(database, "bob@example.com")
        ignored = _ROW_IDENTITY | {"id"} | moment
        assert _without(imported, ignored) == _without(api, ignored)
        imported_event = _event_of(database, "ada@example.com")
        api_event = _event_of(database, "bob@example.com")
        ignored = _EVENT_IDENTITY | moment
        assert _without(imported_event, ignored) == _without(api_event, ignored)
        assert ("claimed_occurred_at" in imported_event["context"]) is future
        assert (imported["occurred_at"] == occurred_at) is not future

    def test_an_opt_out_is_the_same_but_guarded_as_the_persons_own(
        self, database: Database, topic: str
    ) -> None:
        occurred_at = (utcnow() - timedelta(days=1)).replace(microsecond=0)

        sha256 = _import(database, "ada@example.com", "unsubscribed", occurred_at)
        _through_the_api_path(database, "bob@example.com", Status.UNSUBSCRIBED, occurred_at, sha256)

        imported, api = _row_of(database, "ada@example.com"), _row_of(database, "bob@example.com")
        ignored = _ROW_IDENTITY | {"id", "by_recipient"}
        assert _without(imported, ignored) == _without(api, ignored)
        # The import's one rule of its own (imports.rules.decide_row): the file cannot say
        # who opted out, so the opt-out is guarded against re-subscription by API clients.
        assert (imported["by_recipient"], api["by_recipient"]) == (True, False)
        assert _without(_event_of(database, "ada@example.com"), _EVENT_IDENTITY) == _without(
            _event_of(database, "bob@example.com"), _EVENT_IDENTITY
        )
