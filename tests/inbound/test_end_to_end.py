"""Events coming in, end to end on both engines: what a complaint and a hard bounce do to
eligibility, the exports and the trail; the guard after a complaint; deduplication; unknown
addresses; lifting a bounce."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import col, select

from prefcenter.apikeys.schemas import Scope
from prefcenter.app import create_app
from prefcenter.audit.models import AuditEvent
from prefcenter.db import Database
from prefcenter.inbound.receive import InboundState
from prefcenter.outbox.models import OutboxMessage
from prefcenter.settings import Settings
from tests.inbound.esp import SnsSigner, fixture
from tests.inbound.helpers import bounce_row, eligibility, subscribe, written
from tests.support.factories import (
    Headers,
    assert_problem,
    audit_events,
    lookup,
    make_topic,
    record_change,
)
from tests.support.harness import issue_key, make_settings


def post_sns(client: TestClient, message: dict[str, Any]) -> Any:
    response = client.post(
        "/v1/inbound/ses",
        content=json.dumps(message).encode(),
        headers={"Content-Type": "text/plain"},
    )
    assert response.status_code == 200, response.text
    return response.json()


def bounce_of(email: str, *, permanent: bool = True) -> dict[str, Any]:
    content: dict[str, Any] = fixture("ses_bounce.json")
    content["bounce"]["bouncedRecipients"][0]["emailAddress"] = email
    if not permanent:
        content["bounce"]["bounceType"] = "Transient"
    return content


def complaint_of(email: str) -> dict[str, Any]:
    content: dict[str, Any] = fixture("ses_complaint.json")
    content["complaint"]["complainedRecipients"] = [{"emailAddress": email}]
    return content


def csv_rows(client: TestClient, headers: Headers, path: str) -> list[list[str]]:
    response = client.get(path, headers=headers)
    assert response.status_code == 200, response.text
    return [line.split(",") for line in response.text.strip().splitlines()]


class TestComplaint:
    def test_a_complaint_suppresses_and_an_api_client_cannot_undo_it(
        self, client: TestClient, admin_headers: Headers, database: Database, sns: SnsSigner
    ) -> None:
        make_topic(client, admin_headers, "newsletter")
        make_topic(client, admin_headers, "offers", consent="opt_out")
        subscribe(client, admin_headers, "ada@example.com", "newsletter")
        post_sns(client, sns.notification(complaint_of("ada@example.com")))
        assert eligibility(client, admin_headers, "newsletter", "ada@example.com") == ["suppressed"]
        assert eligibility(client, admin_headers, "offers", "ada@example.com") == ["suppressed"]
        crm = issue_key(database, Scope.CONSENT_WRITE, name="crm")
        record_change(client, crm, "ada@example.com", "subscribed", expect=409, source="api")
        record_change(
            client,
            crm,
            "ada@example.com",
            "subscribed",
            topic="newsletter",
            expect=409,
            source="api",
        )
        event = audit_events(database)[-1]
        assert event.source == "complaint"
        assert event.actor == "esp:ses"
        assert event.to_status == "unsubscribed"
        assert event.evidence["esp"] == "ses"
        assert event.evidence["type"] == "Complaint"
        assert event.evidence["feedback_id"].startswith("000001378603177f")
        changes = client.get("/v1/changes", headers=admin_headers).json()["events"]
        assert changes[-1]["source"] == "complaint"

    def test_the_same_sns_message_twice_leaves_one_event(
        self, client: TestClient, admin_headers: Headers, database: Database, sns: SnsSigner
    ) -> None:
        make_topic(client, admin_headers, "newsletter")
        subscribe(client, admin_headers, "ada@example.com", "newsletter")
        message = sns.notification(complaint_of("ada@example.com"))
        first = post_sns(client, message)
        before = written(database)
        second = post_sns(client, message)
        assert (first["recorded"], second["duplicates"]) == (1, 1)
        assert written(database) == before
        with database.transaction(write=False) as session:
            complaints = session.exec(
                select(AuditEvent).where(AuditEvent.source == "complaint")
            ).all()
        assert len(complaints) == 1


class TestBounce:
    def test_a_hard_bounce_blocks_every_kind_of_mail(
        self, client: TestClient, admin_headers: Headers, database: Database, sns: SnsSigner
    ) -> None:
        make_topic(client, admin_headers, "newsletter")
        make_topic(client, admin_headers, "receipts", kind="transactional", consent="opt_out")
        subscribe(client, admin_headers, "jane@example.com", "newsletter")
        post_sns(client, sns.notification(bounce_of("jane@example.com")))
        for topic in ("newsletter", "receipts"):
            assert eligibility(client, admin_headers, topic, "jane@example.com") == ["bounced"]
        (jane,) = lookup(client, admin_headers, "jane@example.com")
        assert jane["bounced"] is True
        assert jane["suppressed"] is False  # not a consent change
        contact = client.get(f"/v1/contacts/{jane['contact_id']}", headers=admin_headers).json()
        assert contact["bounce"]["bounced"] is True
        assert contact["bounce"]["source"] == "ses"
        event = contact["events"][-1]
        assert (event["kind"], event["outcome"], event["to_status"]) == (
            "bounce",
            "applied",
            "bounced",
        )
        assert event["evidence"]["diagnostic"].startswith("smtp; 550 5.1.1")
        # The address is not in the hashed bytes of the event (only its keyed hash is).
        with database.transaction(write=False) as session:
            stored = session.exec(select(AuditEvent).where(AuditEvent.kind == "bounce")).one()
        assert b"jane@example.com" not in stored.canonical
        assert client.get("/v1/audit/verify", headers=admin_headers).json()["ok"] is True

    def test_a_second_hard_bounce_keeps_the_first_one_in_force(
        self, client: TestClient, admin_headers: Headers, database: Database, sns: SnsSigner
    ) -> None:
        make_topic(client, admin_headers, "newsletter")
        subscribe(client, admin_headers, "jane@example.com", "newsletter")
        post_sns(client, sns.notification(bounce_of("jane@example.com")))
        first = bounce_row(database, "jane@example.com")
        assert first is not None
        second = post_sns(client, sns.notification(bounce_of("jane@example.com")))
        assert (second["recorded"], second["duplicates"]) == (1, 0)
        again = bounce_row(database, "jane@example.com")
        assert again is not None
        assert (again.bounced, again.since, again.event_id, again.occurred_at) == (
            True,
            first.since,
            first.event_id,
            first.occurred_at,
        )
        bounces = [e for e in audit_events(database) if e.kind == "bounce"]
        assert [e.outcome for e in bounces] == ["applied", "unchanged"]

    def test_one_notification_for_several_recipients_records_each_known_one(
        self, client: TestClient, admin_headers: Headers, database: Database, sns: SnsSigner
    ) -> None:
        make_topic(client, admin_headers, "newsletter")
        for email in ("jane@example.com", "mary@example.com"):
            subscribe(client, admin_headers, email, "newsletter")
        content = bounce_of("jane@example.com")
        content["bounce"]["bouncedRecipients"] = [
            {"emailAddress": email}
            for email in ("Mary@Example.com", "jane@example.com", "nobody@example.com")
        ]
        answer = post_sns(client, sns.notification(content))
        assert (answer["recorded"], answer["unknown_addresses"]) == (2, 1)
        for email in ("jane@example.com", "mary@example.com"):
            row = bounce_row(database, email)
            assert row is not None
            assert row.bounced is True
        assert written(database)["Contact"] == 2
        again = post_sns(client, sns.notification(content))
        assert (again["recorded"], again["unknown_addresses"]) == (2, 1)  # another MessageId

    def test_bounced_addresses_are_in_the_suppressions_and_out_of_the_audience(
        self, client: TestClient, admin_headers: Headers, sns: SnsSigner
    ) -> None:
        make_topic(client, admin_headers, "offers", consent="opt_out")
        for email in ("jane@example.com", "mary@example.com"):
            subscribe(client, admin_headers, email, "offers")
        post_sns(client, sns.notification(bounce_of("jane@example.com")))
        post_sns(client, sns.notification(complaint_of("jane@example.com")))
        suppressions = csv_rows(client, admin_headers, "/v1/suppressions")
        assert [row[:2] for row in suppressions] == [
            ["email", "reason"],
            ["jane@example.com", "unsubscribed_all"],
            ["jane@example.com", "bounced"],
        ]
        audience = csv_rows(client, admin_headers, "/v1/topics/offers/audience")
        assert [row[0] for row in audience] == ["email", "mary@example.com"]

    def test_soft_bounces_count_and_the_third_within_the_window_bounces(
        self, client: TestClient, admin_headers: Headers, database: Database, sns: SnsSigner
    ) -> None:
        make_topic(client, admin_headers, "newsletter")
        subscribe(client, admin_headers, "jane@example.com", "newsletter")
        for day in ("2016-01-01", "2016-01-20", "2016-01-22"):
            content = bounce_of("jane@example.com", permanent=False)
            content["bounce"]["timestamp"] = f"{day}T10:00:00.000Z"
            post_sns(client, sns.notification(content))
        # Days 20 and 22 are within 7 days of each other; day 1 is not: two counted.
        assert eligibility(client, admin_headers, "newsletter", "jane@example.com") == [
            "subscribed"
        ]
        row = bounce_row(database, "jane@example.com")
        assert row is not None
        assert len(row.soft_bounces.split()) == 2
        content = bounce_of("jane@example.com", permanent=False)
        content["bounce"]["timestamp"] = "2016-01-23T10:00:00.000Z"
        post_sns(client, sns.notification(content))
        assert eligibility(client, admin_headers, "newsletter", "jane@example.com") == ["bounced"]

    def test_an_admin_lifts_a_bounce_with_a_reason(
        self, client: TestClient, admin_headers: Headers, database: Database, sns: SnsSigner
    ) -> None:
        make_topic(client, admin_headers, "newsletter")
        contact_id = subscribe(client, admin_headers, "jane@example.com", "newsletter")[
            "contact_id"
        ]
        message = sns.notification(bounce_of("jane@example.com"))
        post_sns(client, message)
        path = f"/v1/contacts/{contact_id}/bounce"
        assert_problem(client.delete(path, headers=admin_headers), 422, "reason-required")
        crm = issue_key(database, Scope.CONSENT_WRITE, Scope.CONSENT_READ, name="crm")
        assert_problem(client.delete(path, headers=crm, params={"reason": "x"}), 403)
        lifted = client.request(
            "DELETE", path, headers=admin_headers, json={"reason": "Mailbox restored, ticket 42"}
        )
        assert lifted.status_code == 200, lifted.text
        assert lifted.json()["changed"] is True
        assert eligibility(client, admin_headers, "newsletter", "jane@example.com") == [
            "subscribed"
        ]
        event = audit_events(database)[-1]
        assert (event.kind, event.reason, event.to_status) == (
            "bounce_lifted",
            "Mailbox restored, ticket 42",
            "deliverable",
        )
        # The same bounce from another topic's notification, dated before the lift: it was
        # known when the bounce was lifted, and does not undo the lift.
        post_sns(client, sns.notification(bounce_of("jane@example.com")))
        assert eligibility(client, admin_headers, "newsletter", "jane@example.com") == [
            "subscribed"
        ]
        assert audit_events(database)[-1].outcome == "superseded"
        again = client.delete(path, headers=admin_headers, params={"reason": "again"})
        assert again.json() == {
            "contact_id": contact_id,
            "bounced": False,
            "changed": False,
            "event_id": None,
        }
        assert_problem(
            client.delete(
                "/v1/contacts/nobody/bounce", headers=admin_headers, params={"reason": "x"}
            ),
            404,
        )


class TestUnknown:
    def test_an_unknown_address_creates_no_contact(
        self, client: TestClient, admin_headers: Headers, database: Database, sns: SnsSigner
    ) -> None:
        before = written(database)
        answer = post_sns(client, sns.notification(bounce_of("stranger@example.com")))
        assert answer["unknown_addresses"] == 1
        after = written(database)
        assert after["Contact"] == before["Contact"]
        assert after["AuditEvent"] == before["AuditEvent"]
        assert lookup(client, admin_headers, "stranger@example.com")[0]["contact_id"] is None

    def test_an_erased_address_is_not_brought_back(
        self, client: TestClient, admin_headers: Headers, database: Database, sns: SnsSigner
    ) -> None:
        make_topic(client, admin_headers, "newsletter")
        contact_id = subscribe(client, admin_headers, "jane@example.com", "newsletter")[
            "contact_id"
        ]
        assert client.delete(f"/v1/contacts/{contact_id}", headers=admin_headers).status_code == 200
        before = written(database)
        answer = post_sns(client, sns.notification(complaint_of("jane@example.com")))
        assert answer["unknown_addresses"] == 1
        assert written(database)["Contact"] == before["Contact"]
        assert written(database)["AuditEvent"] == before["AuditEvent"]

    def test_a_notification_type_we_do_not_act_on_is_accepted(
        self, client: TestClient, database: Database, sns: SnsSigner
    ) -> None:
        before = written(database)
        answer = post_sns(client, sns.notification(fixture("ses_delivery.json")))
        assert answer["ignored"] == 1
        assert written(database) == before

    def test_routes_answer_404_until_configured(self, database_url: str) -> None:
        with TestClient(create_app(make_settings(database_url))) as bare:
            for esp in ("ses", "sendgrid", "mailgun", "postmark"):
                assert_problem(bare.post(f"/v1/inbound/{esp}", content=b"{}"), 404)


class TestAnnouncedByWebhooks:
    def test_a_complaint_and_a_hard_bounce_queue_their_webhook_deliveries(
        self,
        settings: Settings,
        admin_headers: Headers,
        database: Database,
        sns: SnsSigner,
    ) -> None:
        """`contact.complained` and `contact.bounced` reach the endpoints that want them, in
        the transaction that records the complaint or the bounce."""
        allowing = settings.model_copy(update={"webhooks_allow_private": True})
        app = create_app(allowing)
        visited: list[str] = []
        app.state.inbound = InboundState.from_settings(
            allowing, fetch=sns.fetch, confirm=visited.append
        )
        with TestClient(app) as client:
            endpoint = client.post(
                "/v1/webhooks",
                headers=admin_headers,
                json={
                    "url": "http://127.0.0.1:9/hooks",
                    "events": ["contact.complained", "contact.bounced"],
                },
            )
            assert endpoint.status_code == 201, endpoint.text
            make_topic(client, admin_headers, "newsletter")
            subscribe(client, admin_headers, "ada@example.com", "newsletter")
            subscribe(client, admin_headers, "bob@example.com", "newsletter")

            post_sns(client, sns.notification(complaint_of("ada@example.com")))
            post_sns(client, sns.notification(bounce_of("bob@example.com")))

        with database.transaction(write=False) as session:
            rows = session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id))).all()
        assert [row.payload["type"] for row in rows] == ["contact.complained", "contact.bounced"]
