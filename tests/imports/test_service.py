"""Imports against a real database, on both engines: new addresses land with one audit event
each, a re-run changes nothing, opt-outs and erasures are never reversed, and a batch that
fails leaves nothing half-applied."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import Session, col, select

from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.models import AuditEvent
from prefcenter.consent.ledger import bulk_subscriptions
from prefcenter.consent.models import ErasedAddress, Subscription
from prefcenter.contacts.models import Contact
from prefcenter.db import Database, utcnow
from prefcenter.imports.schemas import BatchStatus, ImportReport
from prefcenter.imports.service import ImportRequest, file_sha256, run_import
from prefcenter.settings import Settings
from prefcenter.topics.errors import UnknownTopic
from tests.support.factories import (
    Headers,
    audit_events,
    count_rows,
    issue_links,
    lookup,
    make_topic,
    record_change,
    subscription_status,
    token_of,
)

TOPIC = "newsletter"


def csv_file(*rows: str, header: str = "email,status") -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


def run(database: Database, data: bytes, **options: Any) -> ImportReport:
    binary = io.BytesIO(data)
    request = ImportRequest(
        topic=options.pop("topic", TOPIC),
        name="crm-export",
        actor="cli:test",
        file_name="people.csv",
        **options,
    )
    return run_import(database, binary, request, sha256=file_sha256(binary))


def events_of(database: Database, email: str) -> list[str]:
    """The ids of the contact's events."""
    with database.transaction(write=False) as session:
        contact = session.exec(select(Contact).where(Contact.address == email)).one()
        return list(
            session.exec(select(AuditEvent.id).where(AuditEvent.contact_id == contact.public_id))
        )


@pytest.fixture
def topic(client: TestClient, admin_headers: Headers) -> str:
    make_topic(client, admin_headers, TOPIC)
    return TOPIC


class TestNewAddresses:
    def test_land_with_contact_subscription_and_one_event_each(
        self, database: Database, topic: str
    ) -> None:
        data = csv_file("ada@example.com,subscribed", "grace@example.com,unsubscribed")
        before = len(audit_events(database))

        report = run(database, data)

        assert (report.applied.subscribed, report.applied.unsubscribed) == (1, 1)
        assert report.complete
        assert [b.status for b in report.batches] == [BatchStatus.COMMITTED]
        events = audit_events(database)[before:]
        assert len(events) == 2
        for event in events:
            assert event.source == "import"
            assert event.actor == "cli:test"
        with database.transaction(write=False) as session:
            statuses = dict(
                session.exec(
                    select(Contact.address, Subscription.status).join(
                        Subscription, col(Subscription.contact_id) == col(Contact.id)
                    )
                ).all()
            )
        assert statuses == {"ada@example.com": "subscribed", "grace@example.com": "unsubscribed"}

    def test_events_carry_the_file_name_and_checksum_as_evidence(
        self, client: TestClient, admin_headers: Headers, database: Database, topic: str
    ) -> None:
        data = csv_file("ada@example.com,subscribed")
        report = run(database, data)
        contact_id = lookup(client, admin_headers, "ada@example.com")[0]["contact_id"]

        history = client.get(f"/v1/contacts/{contact_id}", headers=admin_headers).json()

        (event,) = history["history"] if "history" in history else history["events"]
        assert event["source"] == "import"
        assert event["evidence"]["sha256"] == report.sha256
        assert event["evidence"]["file"] == "people.csv"
        assert event["evidence"]["import"] == "crm-export"

    def test_running_the_same_file_again_changes_nothing(
        self, database: Database, topic: str
    ) -> None:
        data = csv_file("ada@example.com,subscribed", "grace@example.com,unsubscribed")
        run(database, data)
        before = len(audit_events(database))

        again = run(database, data)

        assert again.unchanged == 2
        assert again.applied.subscribed + again.applied.unsubscribed == 0
        assert len(audit_events(database)) == before

    def test_a_dry_run_writes_nothing(self, database: Database, topic: str) -> None:
        before = len(audit_events(database))

        report = run(database, csv_file("ada@example.com,subscribed"), dry_run=True)

        assert report.applied.subscribed == 1
        assert report.batches[0].status is BatchStatus.DRY_RUN
        assert count_rows(database, Contact) == 0
        assert len(audit_events(database)) == before


class TestNeverReverses:
    def test_resubscribing_opted_out_addresses_is_reported_not_applied(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        database: Database,
        topic: str,
    ) -> None:
        # A topic opt-out by an API client, a contact-wide opt-out, the person's own opt-out.
        record_change(client, writer_headers, "tool@example.com", "unsubscribed", topic=topic)
        record_change(client, writer_headers, "all@example.com", "unsubscribed")
        links = issue_links(client, admin_headers, "self@example.com", topic=topic)
        answer = client.post(
            f"/u/{token_of(links['unsubscribe_url'])}", data={"List-Unsubscribe": "One-Click"}
        )
        assert answer.status_code == 200
        opted_out = ["tool@example.com", "all@example.com", "self@example.com"]
        history = {email: events_of(database, email) for email in opted_out}

        report = run(
            database,
            csv_file(*(f"{e},subscribed" for e in opted_out), "new@example.com,subscribed"),
        )

        assert report.refused_reversal.count == 3
        assert [s.line for s in report.refused_reversal.sample] == [2, 3, 4]
        assert report.refused_reversal.sample[0].email == "t•••@example.com"
        assert report.applied.subscribed == 1
        for email in opted_out:
            assert events_of(database, email) == history[email]
        contacts = lookup(client, admin_headers, *opted_out)
        assert [subscription_status(c, topic) for c in contacts] == [
            "unsubscribed",
            None,
            "unsubscribed",
        ]
        assert contacts[1]["suppressed"]

    def test_an_imported_opt_out_cannot_be_undone_by_an_api_client(
        self, client: TestClient, writer_headers: Headers, database: Database, topic: str
    ) -> None:
        run(database, csv_file("ada@example.com,unsubscribed"))

        record_change(
            client, writer_headers, "ada@example.com", "subscribed", topic=topic, expect=409
        )

    def test_erased_addresses_are_refused_and_not_stored_again(
        self, database: Database, settings: Settings, topic: str
    ) -> None:
        keys = AuditKeys.from_settings(settings)
        with database.transaction(write=True) as session:
            session.add(
                ErasedAddress(
                    address_hash=keys.address_hash("gone@example.com"), erased_at=utcnow()
                )
            )

        report = run(
            database, csv_file("Gone@Example.com,subscribed", "gone@example.com,unsubscribed")
        )

        assert report.refused_erased.count == 2
        assert count_rows(database, Contact) == 0


class TestBatches:
    def test_a_failing_batch_is_rolled_back_whole_and_the_import_stops(
        self, monkeypatch: pytest.MonkeyPatch, database: Database, topic: str
    ) -> None:
        original = bulk_subscriptions.subscriptions_written
        calls: list[int] = []

        @contextmanager
        def fail_on_second_batch(session: Session, *args: Any, **kwargs: Any) -> Iterator[None]:
            calls.append(1)
            with original(session, *args, **kwargs):  # written, then undone by the rollback
                yield
            if len(calls) == 2:
                session.execute(text("INSERT INTO no_such_table VALUES (1)"))

        monkeypatch.setattr(bulk_subscriptions, "subscriptions_written", fail_on_second_batch)
        rows = [f"p{i}@example.com,subscribed" for i in range(9)]
        before = len(audit_events(database))

        report = run(database, csv_file(*rows), batch_size=3)

        assert [(b.number, b.status) for b in report.batches] == [
            (1, BatchStatus.COMMITTED),
            (2, BatchStatus.FAILED),
        ]
        assert (report.batches[1].first_line, report.batches[1].last_line) == (5, 7)
        assert report.batches[1].error
        assert not report.complete
        assert report.applied.subscribed == 3
        assert report.failed_rows == 3
        assert count_rows(database, Subscription) == 3
        assert count_rows(database, Contact) == 3
        assert len(audit_events(database)) == before + 3

    def test_a_merge_failing_beside_the_events_fails_its_batch_with_the_databases_words(
        self,
        monkeypatch: pytest.MonkeyPatch,
        database_url: str,
        database: Database,
        topic: str,
    ) -> None:
        # PostgreSQL merges the subscriptions in another thread while the events are made
        # (ledger.bulk_subscriptions.subscriptions_written): its error still fails the batch,
        # as one raised in the batch's own thread does, and nothing of the batch is written.
        if not database_url.startswith("postgresql"):
            pytest.skip("SQLite merges in the batch's own thread")
        monkeypatch.setattr(
            bulk_subscriptions, "_MERGE_SUBSCRIPTIONS", "INSERT INTO no_such_table VALUES (1)"
        )
        before = len(audit_events(database))

        report = run(database, csv_file("p1@example.com,subscribed"), batch_size=3)

        assert [(b.number, b.status) for b in report.batches] == [(1, BatchStatus.FAILED)]
        assert "no_such_table" in (report.batches[0].error or "")
        assert not report.complete
        assert count_rows(database, Subscription) == 0
        assert count_rows(database, Contact) == 0
        assert len(audit_events(database)) == before

    def test_a_file_that_fails_to_read_midway_raises_as_before_after_the_batches_before_it(
        self, database: Database, topic: str
    ) -> None:
        # The rows are read in the preparing thread (imports.prepare): its error still reaches
        # the caller, after the batches before it committed, with nothing of its batch written.
        rows = [f"p{i}@example.com,subscribed" for i in range(9)]
        data = csv_file(*rows)
        binary = _FailingRead(data, fail_after=len(data) // 2)
        request = ImportRequest(topic=topic, name="crm", actor="cli:test", batch_size=3)
        before = len(audit_events(database))

        with pytest.raises(OSError, match="disk went away"):
            run_import(database, binary, request, sha256="00" * 32)

        # The first batch (read whole before the failing read) landed; the second did not.
        assert count_rows(database, Subscription) == 3
        assert count_rows(database, Contact) == 3
        assert len(audit_events(database)) == before + 3

    def test_rows_alike_but_for_their_evidence_are_decided_apart(
        self, client: TestClient, admin_headers: Headers, database: Database
    ) -> None:
        # A batch decides rows alike (state, status, time, evidence or not) once: the row's
        # own evidence is part of what makes them alike.
        make_topic(client, admin_headers, "partners", kind="sharing", third_party="Acme Ltd")
        report = run(
            database,
            csv_file(
                "ada@example.com,subscribed,",
                "bob@example.com,subscribed,signed form 12",
                header="email,status,evidence",
            ),
            topic="partners",
        )

        assert report.refused_no_evidence.count == 1
        assert report.applied.subscribed == 1

    def test_duplicates_are_decided_in_file_order(self, database: Database, topic: str) -> None:
        report = run(
            database,
            csv_file(
                "ada@example.com,subscribed",
                "ADA@example.com,unsubscribed",
                "ada@example.com,subscribed",
            ),
        )

        assert report.duplicates == 2
        assert (report.applied.subscribed, report.applied.unsubscribed) == (1, 1)
        assert report.refused_reversal.count == 1

    def test_an_unknown_topic_is_refused_before_anything(self, database: Database) -> None:
        with pytest.raises(UnknownTopic):
            run(database, csv_file("ada@example.com,subscribed"), topic="nope")


class _FailingRead(io.BytesIO):
    """A file whose reads fail once `fail_after` bytes have been read."""

    def __init__(self, data: bytes, *, fail_after: int) -> None:
        super().__init__(data)
        self._fail_after = fail_after

    def read1(self, size: int | None = -1, /) -> bytes:
        return self.read(size)

    def read(self, size: int | None = -1, /) -> bytes:
        if self.tell() >= self._fail_after:
            raise OSError("disk went away")
        limit = self._fail_after - self.tell()
        return super().read(limit if size is None or size < 0 else min(size, limit))
