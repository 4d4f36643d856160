"""Every path that changes consent queues its deliveries in its own transaction, on both
engines: the one-click (PostgreSQL's single statement included), a contact-wide opt-out
(also `contact.suppressed`), a batch of API changes, an erasure, an import (set-based, per
batch, in order; then `import.finished`), and replays from the audit trail."""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import col, select

from prefcenter.apikeys.schemas import Scope
from prefcenter.audit.context import RequestContext
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.models import AuditEvent
from prefcenter.consent.ledger.lane import read_optout_state, write_optout
from prefcenter.consent.rules import Status
from prefcenter.db import Database, utcnow
from prefcenter.imports.service import ImportRequest, file_sha256, run_import
from prefcenter.preference_center import service
from prefcenter.settings import Settings, parse_signing_keys
from prefcenter.tokens import TokenPurpose, verify_token
from prefcenter.webhooks.queue import (
    queue_contact_bounced,
    queue_contact_complained,
    queue_notice_published,
)
from tests.preference_center.test_router import one_click
from tests.support.factories import Headers, issue_links, token_of
from tests.support.harness import TEST_SIGNING_KEYS, issue_key
from tests.webhooks.helpers import change, create_endpoint, deliveries, make_sender, run
from tests.webhooks.receiver import Receiver

RING = parse_signing_keys(TEST_SIGNING_KEYS)


def types_of(database: Database) -> list[str]:
    return [str(r.payload["type"]) for r in deliveries(database)]


def deliver(database: Database, settings: Settings) -> None:
    report = run(make_sender(database, settings))
    assert report.failed == report.retried == 0, report.errors


class TestRecipientOptOuts:
    def test_a_one_click_queues_consent_changed_in_its_transaction(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        hooks: Receiver,
        database: Database,
        settings: Settings,
    ) -> None:
        endpoint = create_endpoint(client, admin, hooks.url)
        change(client, writer, "ada@example.com", "subscribed")
        links = issue_links(
            client, issue_key(database, Scope.LINKS), "ada@example.com", topic=topic
        )
        assert one_click(client, links["unsubscribe_url"]).status_code == 200

        assert types_of(database) == ["consent.changed", "consent.changed"]
        deliver(database, settings)
        last = hooks.inbox.received()[-1].verified_by(endpoint["secret"])
        assert last["data"]["to_status"] == "unsubscribed"
        assert last["data"]["source"] == "one_click" or last["data"]["actor"]
        with database.transaction(write=False) as session:
            newest = session.exec(select(AuditEvent).order_by(col(AuditEvent.seq).desc())).first()
        assert newest is not None
        assert last["data"]["id"] == newest.id

    def test_an_all_marketing_opt_out_is_also_contact_suppressed(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        hooks: Receiver,
        database: Database,
        settings: Settings,
    ) -> None:
        endpoint = create_endpoint(client, admin, hooks.url)
        change(client, writer, "ada@example.com", "subscribed")
        links = issue_links(client, issue_key(database, Scope.LINKS), "ada@example.com")
        assert one_click(client, links["unsubscribe_url"]).status_code == 200
        # Once more: unchanged, so consent.changed only.
        assert one_click(client, links["unsubscribe_url"]).status_code == 200

        assert types_of(database) == [
            "consent.changed",
            "consent.changed",
            "contact.suppressed",
            "consent.changed",
        ]
        deliver(database, settings)
        bodies = [d.verified_by(endpoint["secret"]) for d in hooks.inbox.received()]
        suppressed = [b for b in bodies if b["type"] == "contact.suppressed"]
        assert len(suppressed) == 1
        assert suppressed[0]["data"]["kind"] == "global_consent_change"
        assert suppressed[0]["data"]["to_status"] == "unsubscribed"
        ids = [d.webhook_id for d in hooks.inbox.received()]
        assert len(set(ids)) == len(ids)  # the same event as two types: two webhook-ids


class TestConsentBatch:
    def test_a_batch_queues_each_applied_change_in_order(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        hooks: Receiver,
        database: Database,
    ) -> None:
        create_endpoint(client, admin, hooks.url)
        response = client.post(
            "/v1/consents/batch",
            headers=writer,
            json={
                "changes": [
                    {"email": "ada@example.com", "topic": topic, "status": "subscribed"},
                    {"email": "bob@example.com", "status": "unsubscribed"},
                    {"email": "ada@example.com", "topic": topic, "status": "unsubscribed"},
                    {"email": "not an address", "status": "unsubscribed"},
                ]
            },
        )
        assert response.status_code == 200, response.text
        events = [r["event_id"] for r in response.json()["results"][:3]]

        assert [(d.payload["type"], d.cause_event_id) for d in deliveries(database)] == [
            ("consent.changed", events[0]),
            ("consent.changed", events[1]),
            ("contact.suppressed", events[1]),
            ("consent.changed", events[2]),
        ]

    def test_an_endpoint_of_one_type_gets_that_type_only(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        hooks: Receiver,
        database: Database,
    ) -> None:
        create_endpoint(client, admin, hooks.url, events=["contact.suppressed"])
        changes = [
            {"email": "ada@example.com", "topic": topic, "status": "subscribed"},
            {"email": "bob@example.com", "status": "unsubscribed"},
        ]
        response = client.post("/v1/consents/batch", headers=writer, json={"changes": changes})
        assert response.status_code == 200, response.text

        assert types_of(database) == ["contact.suppressed"]


class TestErasure:
    def test_an_erasure_is_contact_erased(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        hooks: Receiver,
        database: Database,
        settings: Settings,
    ) -> None:
        endpoint = create_endpoint(client, admin, hooks.url, ["contact.erased"])
        contact_id = change(client, writer, "ada@example.com", "subscribed")["contact_id"]
        assert client.delete(f"/v1/contacts/{contact_id}", headers=admin).status_code == 200
        assert types_of(database) == ["contact.erased"]
        deliver(database, settings)
        (delivery,) = hooks.inbox.received()
        body = delivery.verified_by(endpoint["secret"])
        assert body["type"] == "contact.erased"
        assert body["data"]["contact_id"] == contact_id
        assert body["data"]["kind"] == "erasure"
        assert b"ada@" not in delivery.body


class TestImports:
    def import_csv(self, database: Database, data: bytes, **options: Any) -> None:
        binary = io.BytesIO(data)
        run_import(
            database,
            binary,
            ImportRequest(
                topic="newsletter",
                name="crm-export",
                actor="cli:test",
                file_name="people.csv",
                **options,
            ),
            sha256=file_sha256(binary),
        )

    def test_every_applied_row_is_delivered_in_order_then_import_finished(
        self,
        client: TestClient,
        admin: Headers,
        topic: str,
        hooks: Receiver,
        database: Database,
        settings: Settings,
    ) -> None:
        endpoint = create_endpoint(client, admin, hooks.url)
        rows = [f"p{n}@example.com,subscribed" for n in range(25)]
        # The same person twice in a batch: two events, delivered in that order.
        rows += ["p0@example.com,unsubscribed", "broken,subscribed"]
        self.import_csv(
            database, ("email,status\n" + "\n".join(rows) + "\n").encode(), batch_size=10
        )

        counts = Counter(types_of(database))
        assert counts == {"consent.changed": 26, "import.finished": 1}
        deliver(database, settings)
        bodies = [d.verified_by(endpoint["secret"]) for d in hooks.inbox.received()]
        p0 = [
            b["data"]["seq"]
            for b in bodies
            if b["type"] == "consent.changed"
            and b["data"]["contact_id"] == bodies[0]["data"]["contact_id"]
        ]
        assert p0 == sorted(p0)
        (finished,) = [b for b in bodies if b["type"] == "import.finished"]
        data = finished["data"]
        assert data["applied"] == {"subscribed": 25, "unsubscribed": 1}
        assert data["invalid"] == 1
        assert data["complete"] is True
        assert data["source"] == "crm-export"
        assert "sample" not in str(data)  # counts only: no masked addresses

    def test_a_dry_run_queues_nothing(
        self, client: TestClient, admin: Headers, topic: str, hooks: Receiver, database: Database
    ) -> None:
        create_endpoint(client, admin, hooks.url)
        self.import_csv(database, b"email,status\na@example.com,subscribed\n", dry_run=True)
        assert deliveries(database) == []

    def test_with_no_endpoint_an_import_queues_nothing(
        self, client: TestClient, topic: str, database: Database
    ) -> None:
        self.import_csv(database, b"email,status\na@example.com,subscribed\n")
        assert deliveries(database) == []


class TestReplay:
    def test_a_replay_sends_the_events_again_in_order_under_their_first_ids(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        hooks: Receiver,
        database: Database,
        settings: Settings,
    ) -> None:
        before = change(client, writer, "old@example.com", "subscribed")  # before the endpoint
        endpoint = create_endpoint(client, admin, hooks.url, ["consent.changed"])
        change(client, writer, "ada@example.com", "subscribed")
        change(client, writer, "ada@example.com", "unsubscribed")
        deliver(database, settings)
        first_ids = [d.webhook_id for d in hooks.inbox.received()]
        assert len(first_ids) == 2

        response = client.post(
            f"/v1/webhooks/{endpoint['id']}/replay", headers=admin, json={"after_seq": 0}
        )
        assert response.status_code == 200, response.text
        # Every consent change in the trail, the one before the endpoint existed included.
        assert response.json() == {"queued": 3, "replaced": 0}
        deliver(database, settings)
        replayed = hooks.inbox.received()[2:]
        assert {d.webhook_id for d in replayed} == {
            *first_ids,
            f"msg_{before['event_id']}.consent.changed",
        }
        ada = [
            d.verified_by(endpoint["secret"])["data"]
            for d in replayed
            if d.json["data"]["contact_id"] != before["contact_id"]
        ]
        assert [e["seq"] for e in ada] == sorted(e["seq"] for e in ada)  # in order per contact
        assert [d.webhook_id for d in replayed if d.json["data"] in ada] == first_ids

    def test_a_replay_replaces_pending_deliveries_of_those_events(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        hooks: Receiver,
        database: Database,
    ) -> None:
        endpoint = create_endpoint(client, admin, hooks.url)
        change(client, writer, "ada@example.com", "subscribed")
        response = client.post(
            f"/v1/webhooks/{endpoint['id']}/replay", headers=admin, json={"after_seq": 0}
        )
        assert response.json() == {"queued": 1, "replaced": 1}
        assert [r.status for r in deliveries(database)] == ["cancelled", "queued"]


class TestGuardedStatement:
    """PostgreSQL's one-click writes state, event and deliveries in one statement: all or
    nothing."""

    def opt_out(self, database: Database, token: str) -> bool:
        verified = verify_token(RING, TokenPurpose.UNSUBSCRIBE, token, now=utcnow())
        channel = service.Channel.ONE_CLICK
        record = service.recipient_record(
            verified, channel, RequestContext("192.0.2.1", "ua", None)
        )
        requested = service.recipient_change(Status.UNSUBSCRIBED, channel, utcnow())
        keys = AuditKeys.from_settings(database.settings)

        def work(cursor: Any) -> bool:
            state = read_optout_state(
                cursor, public_id=verified.claims.contact_id, topic_key=verified.claims.topic
            )
            assert state is not None
            if self.moved:  # the state changes between the read and the write
                with database.transaction(write=True) as session:
                    session.execute(
                        text(
                            "UPDATE subscription "
                            "SET occurred_at = occurred_at - interval '1 second'"
                        )
                    )
            return (
                write_optout(
                    cursor, state, requested=requested, record=record, keys=keys, now=utcnow()
                )
                is not None
            )

        return database.on_connection(work)

    moved = False

    def test_the_statement_queues_the_deliveries_or_nothing(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        hooks: Receiver,
        database: Database,
    ) -> None:
        if database.settings.is_sqlite:
            pytest.skip("the single statement is PostgreSQL's; SQLite takes apply_change")
        create_endpoint(client, admin, hooks.url)
        change(client, writer, "ada@example.com", "subscribed")
        change(client, writer, "bob@example.com", "subscribed")
        links = issue_key(database, Scope.LINKS)
        ada = token_of(
            issue_links(client, links, "ada@example.com", topic=topic)["unsubscribe_url"]
        )
        bob = token_of(
            issue_links(client, links, "bob@example.com", topic=topic)["unsubscribe_url"]
        )

        self.moved = True
        assert self.opt_out(database, bob) is False  # the guard held: nothing written
        assert len(deliveries(database)) == 2
        self.moved = False
        assert self.opt_out(database, ada) is True
        rows = deliveries(database)
        assert len(rows) == 3
        with database.transaction(write=False) as session:
            newest = session.exec(select(AuditEvent).order_by(col(AuditEvent.seq).desc())).first()
        assert newest is not None
        assert rows[-1].cause_event_id == newest.id
        assert rows[-1].message_id.startswith(f"msg_{newest.id}.consent.changed@")
        assert rows[-1].ordering_key is not None
        assert rows[-1].ordering_key.endswith(":" + (newest.contact_id or ""))


class TestLaterProducers:
    """The functions the inbound-mail and notices work calls: deliveries queued now."""

    def test_bounced_complained_and_notice_published(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        hooks: Receiver,
        database: Database,
        settings: Settings,
    ) -> None:
        endpoint = create_endpoint(
            client, admin, hooks.url, ["contact.bounced", "contact.complained", "notice.published"]
        )
        answer = change(client, writer, "ada@example.com", "subscribed")
        with database.transaction(write=True) as session:
            now = utcnow()
            queue_contact_bounced(
                session, event_id=answer["event_id"], contact_id=answer["contact_id"], now=now
            )
            queue_contact_complained(
                session, event_id=answer["event_id"], contact_id=answer["contact_id"], now=now
            )
            queue_notice_published(session, data={"key": "privacy", "version": "2026-12"}, now=now)
        assert types_of(database) == ["contact.bounced", "contact.complained", "notice.published"]
        deliver(database, settings)
        bodies = {
            b["type"]: b
            for b in (d.verified_by(endpoint["secret"]) for d in hooks.inbox.received())
        }
        assert bodies["contact.bounced"]["data"]["id"] == answer["event_id"]
        assert bodies["notice.published"]["data"] == {"key": "privacy", "version": "2026-12"}
