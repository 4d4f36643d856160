"""`POST /v1/consents`: the answer, the ordering rule, the sync-loop guard, the audit event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from prefcenter.apikeys.schemas import Scope
from prefcenter.consent.models import Suppression
from prefcenter.contacts.models import Contact
from prefcenter.db import Database
from tests.support.factories import (
    Headers,
    assert_problem,
    audit_events,
    audit_head_seq,
    error_fields,
    lookup,
    make_topic,
    record_change,
    row_counts,
    subscription_row,
    subscription_status,
)
from tests.support.harness import issue_key

ADA = "ada@example.com"
HOUR = timedelta(hours=1)


def hours_ago(hours: float) -> datetime:
    return datetime.now(UTC) - timedelta(hours=hours)


class TestPostConsentsAnswer:
    def test_answer_has_the_contract_shape(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        answer = record_change(
            client, writer_headers, "Ada@Example.COM", "subscribed", topic=newsletter
        )

        assert set(answer) >= {"contact_id", "email", "topic", "status", "changed", "event_id"}
        assert answer["email"] == "Ada@Example.COM"
        assert answer["topic"] == newsletter
        assert answer["status"] == "subscribed"
        assert answer["changed"] is True
        (event,) = [e for e in audit_events(database) if e.kind == "consent_change"]
        assert answer["event_id"] == event.id
        with database.transaction(write=False) as session:
            contact = session.exec(select(Contact)).one()
        assert answer["contact_id"] == contact.public_id
        assert contact.address == ADA
        assert contact.address_display == "Ada@Example.COM"

    def test_contact_id_is_opaque_and_stable_per_address(
        self, client: TestClient, writer_headers: Headers, newsletter: str
    ) -> None:
        first = record_change(client, writer_headers, ADA, "subscribed", topic=newsletter)
        same = record_change(
            client, writer_headers, "ADA@EXAMPLE.com", "unsubscribed", topic=newsletter
        )
        other = record_change(
            client, writer_headers, "bob@example.com", "subscribed", topic=newsletter
        )

        assert same["contact_id"] == first["contact_id"]
        assert other["contact_id"] != first["contact_id"]
        assert len(first["contact_id"]) >= 16
        assert not first["contact_id"].isdigit()

    def test_repeating_the_state_is_unchanged_but_recorded(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        record_change(client, writer_headers, ADA, "subscribed", topic=newsletter)

        again = record_change(client, writer_headers, ADA, "subscribed", topic=newsletter)

        assert again["changed"] is False
        assert again["status"] == "subscribed"
        last = audit_events(database)[-1]
        assert last.id == again["event_id"]
        assert last.outcome == "unchanged"


class TestPostConsentsOrdering:
    def test_older_change_is_superseded(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        record_change(
            client, writer_headers, ADA, "subscribed", topic=newsletter, occurred_at=hours_ago(1)
        )
        events_before = len(audit_events(database))

        older = record_change(
            client, writer_headers, ADA, "unsubscribed", topic=newsletter, occurred_at=hours_ago(2)
        )

        assert older["changed"] is False
        assert older["status"] == "subscribed"
        events = audit_events(database)
        assert len(events) == events_before + 1
        assert events[-1].id == older["event_id"]
        assert events[-1].outcome == "superseded"
        assert events[-1].to_status == "unsubscribed"
        (ada,) = lookup(client, writer_headers, ADA)
        assert subscription_status(ada, newsletter) == "subscribed"

    def test_newer_change_applies(
        self, client: TestClient, writer_headers: Headers, newsletter: str
    ) -> None:
        record_change(
            client, writer_headers, ADA, "subscribed", topic=newsletter, occurred_at=hours_ago(2)
        )

        newer = record_change(
            client, writer_headers, ADA, "unsubscribed", topic=newsletter, occurred_at=hours_ago(1)
        )

        assert newer["changed"] is True
        assert newer["status"] == "unsubscribed"
        (ada,) = lookup(client, writer_headers, ADA)
        assert subscription_status(ada, newsletter) == "unsubscribed"

    def test_tie_goes_to_the_opt_out(
        self, client: TestClient, writer_headers: Headers, newsletter: str
    ) -> None:
        moment = hours_ago(1)
        record_change(
            client, writer_headers, ADA, "subscribed", topic=newsletter, occurred_at=moment
        )

        opt_out = record_change(
            client, writer_headers, ADA, "unsubscribed", topic=newsletter, occurred_at=moment
        )
        opt_in = record_change(
            client, writer_headers, ADA, "subscribed", topic=newsletter, occurred_at=moment
        )

        assert (opt_out["changed"], opt_out["status"]) == (True, "unsubscribed")
        assert (opt_in["changed"], opt_in["status"]) == (False, "unsubscribed")
        (ada,) = lookup(client, writer_headers, ADA)
        assert subscription_status(ada, newsletter) == "unsubscribed"

    def test_tie_on_the_global_opt_out_goes_to_the_opt_out(
        self, client: TestClient, writer_headers: Headers
    ) -> None:
        moment = hours_ago(1)
        record_change(client, writer_headers, ADA, "unsubscribed", occurred_at=moment)

        lift = record_change(client, writer_headers, ADA, "subscribed", occurred_at=moment)

        assert lift["changed"] is False
        (ada,) = lookup(client, writer_headers, ADA)
        assert ada["suppressed"] is True

    def test_future_occurred_at_is_clamped_to_now(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        claimed = datetime.now(UTC) + timedelta(days=30)

        answer = record_change(
            client, writer_headers, ADA, "subscribed", topic=newsletter, occurred_at=claimed
        )
        after = datetime.now(UTC)

        row = subscription_row(database, ADA, newsletter)
        assert row is not None
        assert row.occurred_at <= after
        event = audit_events(database)[-1]
        assert event.id == answer["event_id"]
        assert event.occurred_at <= after
        assert datetime.fromisoformat(event.context["claimed_occurred_at"]) == claimed

    def test_clamped_change_does_not_block_a_later_one(
        self, client: TestClient, writer_headers: Headers, newsletter: str
    ) -> None:
        record_change(
            client,
            writer_headers,
            ADA,
            "subscribed",
            topic=newsletter,
            occurred_at=datetime.now(UTC) + timedelta(days=365),
        )

        later = record_change(client, writer_headers, ADA, "unsubscribed", topic=newsletter)

        assert (later["changed"], later["status"]) == (True, "unsubscribed")

    def test_past_occurred_at_is_kept_and_not_marked_clamped(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        claimed = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

        record_change(
            client,
            writer_headers,
            ADA,
            "subscribed",
            topic=newsletter,
            occurred_at="2024-05-01T14:00:00+02:00",
        )

        event = audit_events(database)[-1]
        assert event.occurred_at == claimed
        assert "claimed_occurred_at" not in event.context
        row = subscription_row(database, ADA, newsletter)
        assert row is not None
        assert row.occurred_at == claimed


class TestPostConsentsGuard:
    def test_recipient_opt_out_cannot_be_reversed_by_an_api_client(
        self,
        client: TestClient,
        writer_headers: Headers,
        database: Database,
        newsletter: str,
        subtests: pytest.Subtests,
    ) -> None:
        for source in ["one_click", "support", "preference_center", "list_unsubscribe"]:
            with subtests.test(source=source):
                email = f"{source.replace('_', '-')}@example.com"
                record_change(
                    client,
                    writer_headers,
                    email,
                    "subscribed",
                    topic=newsletter,
                    occurred_at=hours_ago(2),
                )
                record_change(
                    client,
                    writer_headers,
                    email,
                    "unsubscribed",
                    topic=newsletter,
                    source=source,
                    occurred_at=hours_ago(1),
                )
                before = row_counts(database)

                response = client.post(
                    "/v1/consents",
                    headers=writer_headers,
                    json={
                        "email": email,
                        "topic": newsletter,
                        "status": "subscribed",
                        "source": "crm-sync",
                    },
                )

                problem = assert_problem(response, 409, "recipient-opt-out")
                assert "opted out themselves" in problem["detail"]
                assert row_counts(database) == before
                (contact,) = lookup(client, writer_headers, email)
                assert subscription_status(contact, newsletter) == "unsubscribed"

    def test_admin_needs_a_reason_to_reverse_a_recipient_opt_out(
        self,
        client: TestClient,
        writer_headers: Headers,
        admin_headers: Headers,
        database: Database,
        newsletter: str,
    ) -> None:
        record_change(
            client,
            writer_headers,
            ADA,
            "unsubscribed",
            topic=newsletter,
            source="one_click",
            occurred_at=hours_ago(1),
        )
        before = row_counts(database)

        for reason in (None, "   "):
            body = {"email": ADA, "topic": newsletter, "status": "subscribed"}
            if reason is not None:
                body["reason"] = reason
            response = client.post("/v1/consents", headers=admin_headers, json=body)
            problem = assert_problem(response, 422, "reason-required")
            assert "reason" in problem["detail"]
        assert row_counts(database) == before

        answer = record_change(
            client,
            admin_headers,
            ADA,
            "subscribed",
            topic=newsletter,
            reason="Ticket 4711: asked by phone",
            evidence={"ticket": "4711"},
        )

        assert (answer["changed"], answer["status"]) == (True, "subscribed")
        event = audit_events(database)[-1]
        assert event.reason == "Ticket 4711: asked by phone"
        assert event.actor.endswith(":admin")
        assert event.context["actor_kind"] == "admin"

    def test_api_recorded_opt_out_can_be_reversed_by_an_api_client(
        self, client: TestClient, writer_headers: Headers, newsletter: str
    ) -> None:
        record_change(
            client,
            writer_headers,
            ADA,
            "unsubscribed",
            topic=newsletter,
            source="api",
            occurred_at=hours_ago(1),
        )

        answer = record_change(client, writer_headers, ADA, "subscribed", topic=newsletter)

        assert (answer["changed"], answer["status"]) == (True, "subscribed")

    def test_recipient_repeating_an_api_opt_out_makes_it_guarded(
        self, client: TestClient, writer_headers: Headers, newsletter: str
    ) -> None:
        record_change(
            client, writer_headers, ADA, "unsubscribed", topic=newsletter, occurred_at=hours_ago(2)
        )
        record_change(
            client,
            writer_headers,
            ADA,
            "unsubscribed",
            topic=newsletter,
            source="one_click",
            occurred_at=hours_ago(1),
        )

        record_change(client, writer_headers, ADA, "subscribed", topic=newsletter, expect=409)


class TestPostConsentsGlobal:
    def test_omitting_topic_with_unsubscribed_suppresses_all_marketing(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        record_change(
            client, writer_headers, ADA, "subscribed", topic=newsletter, occurred_at=hours_ago(1)
        )

        answer = record_change(client, writer_headers, ADA, "unsubscribed")

        assert answer["topic"] is None
        assert (answer["changed"], answer["status"]) == (True, "unsubscribed")
        (ada,) = lookup(client, writer_headers, ADA)
        assert ada["suppressed"] is True
        event = audit_events(database)[-1]
        assert event.kind == "global_consent_change"
        assert event.topic is None
        assert event.to_status == "unsubscribed"

    def test_omitting_topic_with_subscribed_lifts_an_api_opt_out(
        self, client: TestClient, writer_headers: Headers
    ) -> None:
        record_change(
            client, writer_headers, ADA, "unsubscribed", source="import", occurred_at=hours_ago(1)
        )

        answer = record_change(client, writer_headers, ADA, "subscribed")

        assert (answer["changed"], answer["status"]) == (True, "subscribed")
        (ada,) = lookup(client, writer_headers, ADA)
        assert ada["suppressed"] is False

    def test_omitting_topic_with_subscribed_cannot_lift_a_recipient_opt_out(
        self, client: TestClient, writer_headers: Headers, database: Database
    ) -> None:
        record_change(
            client,
            writer_headers,
            ADA,
            "unsubscribed",
            source="one_click",
            occurred_at=hours_ago(1),
        )
        before = row_counts(database)

        response = client.post(
            "/v1/consents", headers=writer_headers, json={"email": ADA, "status": "subscribed"}
        )

        assert_problem(response, 409, "recipient-opt-out")
        assert row_counts(database) == before
        (ada,) = lookup(client, writer_headers, ADA)
        assert ada["suppressed"] is True

    def test_admin_with_a_reason_lifts_a_recipient_opt_out(
        self,
        client: TestClient,
        writer_headers: Headers,
        admin_headers: Headers,
        database: Database,
    ) -> None:
        record_change(
            client, writer_headers, ADA, "unsubscribed", source="support", occurred_at=hours_ago(1)
        )
        record_change(client, admin_headers, ADA, "subscribed", expect=422)

        record_change(
            client,
            admin_headers,
            ADA,
            "subscribed",
            reason="Written request, case 17",
            evidence={"letter": "case 17"},
        )

        (ada,) = lookup(client, writer_headers, ADA)
        assert ada["suppressed"] is False
        with database.transaction(write=False) as session:
            row = session.exec(select(Suppression)).one()
        assert row.suppressed is False

    def test_lifting_without_an_opt_out_changes_nothing(
        self, client: TestClient, writer_headers: Headers
    ) -> None:
        answer = record_change(client, writer_headers, ADA, "subscribed")

        assert (answer["changed"], answer["status"]) == (False, "subscribed")
        (ada,) = lookup(client, writer_headers, ADA)
        assert ada["suppressed"] is False

    def test_global_opt_out_keeps_topic_subscriptions_as_they_are(
        self, client: TestClient, writer_headers: Headers, newsletter: str
    ) -> None:
        record_change(
            client, writer_headers, ADA, "subscribed", topic=newsletter, occurred_at=hours_ago(1)
        )

        record_change(client, writer_headers, ADA, "unsubscribed")

        (ada,) = lookup(client, writer_headers, ADA)
        assert ada["suppressed"] is True
        assert subscription_status(ada, newsletter) == "subscribed"

    def test_topic_subscribe_is_refused_while_the_recipient_opted_out_of_all(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        record_change(
            client,
            writer_headers,
            ADA,
            "unsubscribed",
            source="one_click",
            occurred_at=hours_ago(1),
        )
        before = row_counts(database)

        response = client.post(
            "/v1/consents",
            headers=writer_headers,
            json={"email": ADA, "topic": newsletter, "status": "subscribed"},
        )

        assert_problem(response, 409, "recipient-opt-out")
        assert row_counts(database) == before
        (ada,) = lookup(client, writer_headers, ADA)
        assert subscription_status(ada, newsletter) is None

    def test_topic_subscribe_during_an_api_opt_out_leaves_it_suppressed(
        self, client: TestClient, writer_headers: Headers, newsletter: str
    ) -> None:
        record_change(client, writer_headers, ADA, "unsubscribed", occurred_at=hours_ago(1))

        answer = record_change(client, writer_headers, ADA, "subscribed", topic=newsletter)

        assert answer["status"] == "subscribed"
        (ada,) = lookup(client, writer_headers, ADA)
        assert ada["suppressed"] is True
        assert subscription_status(ada, newsletter) == "subscribed"

    def test_topic_unsubscribe_is_allowed_while_opted_out_of_all(
        self, client: TestClient, writer_headers: Headers, newsletter: str
    ) -> None:
        record_change(
            client,
            writer_headers,
            ADA,
            "unsubscribed",
            source="one_click",
            occurred_at=hours_ago(1),
        )

        answer = record_change(client, writer_headers, ADA, "unsubscribed", topic=newsletter)

        assert (answer["changed"], answer["status"]) == (True, "unsubscribed")


class TestPostConsentsTopics:
    def test_transactional_topic_changes_are_recorded(
        self, client: TestClient, writer_headers: Headers, admin_headers: Headers
    ) -> None:
        receipts = make_topic(client, admin_headers, "receipts", kind="transactional")["key"]
        record_change(
            client, writer_headers, ADA, "subscribed", topic=receipts, occurred_at=hours_ago(1)
        )

        answer = record_change(client, writer_headers, ADA, "unsubscribed", topic=receipts)

        assert (answer["changed"], answer["status"]) == (True, "unsubscribed")
        (ada,) = lookup(client, writer_headers, ADA)
        assert subscription_status(ada, receipts) == "unsubscribed"

    def test_transactional_subscribe_is_not_blocked_by_a_marketing_opt_out(
        self, client: TestClient, writer_headers: Headers, admin_headers: Headers
    ) -> None:
        receipts = make_topic(client, admin_headers, "receipts", kind="transactional")["key"]
        record_change(
            client,
            writer_headers,
            ADA,
            "unsubscribed",
            source="one_click",
            occurred_at=hours_ago(1),
        )

        answer = record_change(client, writer_headers, ADA, "subscribed", topic=receipts)

        assert (answer["changed"], answer["status"]) == (True, "subscribed")

    def test_double_opt_in_subscribe_by_an_api_client_is_pending(
        self,
        client: TestClient,
        writer_headers: Headers,
        admin_headers: Headers,
        database: Database,
    ) -> None:
        alerts = make_topic(client, admin_headers, "alerts", double_opt_in=True)["key"]

        answer = record_change(client, writer_headers, ADA, "subscribed", topic=alerts)
        again = record_change(client, writer_headers, ADA, "subscribed", topic=alerts)

        assert (answer["changed"], answer["status"]) == (True, "pending")
        assert (again["changed"], again["status"]) == (False, "pending")
        (ada,) = lookup(client, writer_headers, ADA)
        assert subscription_status(ada, alerts) == "pending"
        assert audit_events(database)[-2].to_status == "pending"

    def test_the_trail_names_the_api_key_that_was_given_the_confirmation_link(
        self,
        client: TestClient,
        writer_headers: Headers,
        admin_headers: Headers,
        database: Database,
    ) -> None:
        """The service sends no mail yet: the API client mails the link, and so could confirm
        it itself. The event says who had it."""
        alerts = make_topic(client, admin_headers, "alerts", double_opt_in=True)["key"]
        news = make_topic(client, admin_headers, "news")["key"]

        answer = record_change(client, writer_headers, ADA, "subscribed", topic=alerts)
        again = record_change(client, writer_headers, ADA, "subscribed", topic=alerts)
        record_change(client, writer_headers, ADA, "subscribed", topic=news)

        assert answer["confirm_url"]
        pending, repeated, plain = audit_events(database)[-3:]
        assert pending.context["confirm_link_to"].startswith("api_key:")
        assert pending.context["confirm_link_to"] == pending.actor
        assert again["changed"] is False
        assert "confirm_link_to" not in repeated.context  # nothing newly pending
        assert "confirm_link_to" not in plain.context

    def test_double_opt_in_unsubscribe_applies_at_once(
        self, client: TestClient, writer_headers: Headers, admin_headers: Headers
    ) -> None:
        alerts = make_topic(client, admin_headers, "alerts", double_opt_in=True)["key"]
        record_change(
            client, writer_headers, ADA, "subscribed", topic=alerts, occurred_at=hours_ago(1)
        )

        answer = record_change(client, writer_headers, ADA, "unsubscribed", topic=alerts)

        assert (answer["changed"], answer["status"]) == (True, "unsubscribed")

    def test_unknown_topic_is_422_naming_topic_and_writes_nothing(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        before = row_counts(database)

        response = client.post(
            "/v1/consents",
            headers=writer_headers,
            json={"email": ADA, "topic": "no-such-topic", "status": "unsubscribed"},
        )

        problem = assert_problem(response, 422, "unknown-topic")
        assert error_fields(problem) == ["topic"]
        assert "no-such-topic" in problem["detail"]
        assert row_counts(database) == before


class TestPostConsentsAudit:
    def test_each_change_writes_exactly_one_event_with_its_details(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        before = len(audit_events(database))
        evidence = {
            "form": "signup-v3",
            "ip": "192.0.2.7",
            "checked": True,
            "nested": {"n": [1, 2]},
        }

        answer = record_change(
            client,
            writer_headers,
            ADA,
            "subscribed",
            topic=newsletter,
            source="signup_form",
            campaign_id="spring-2026",
            evidence=evidence,
            occurred_at=hours_ago(1),
        )

        events = audit_events(database)
        assert len(events) == before + 1
        event = events[-1]
        assert event.id == answer["event_id"]
        assert event.kind == "consent_change"
        assert event.contact_id == answer["contact_id"]
        assert event.topic == newsletter
        assert (event.from_status, event.to_status, event.outcome) == (
            None,
            "subscribed",
            "applied",
        )
        assert event.actor.startswith("api_key:")
        assert event.actor.endswith(":crm")
        assert event.source == "signup_form"
        assert event.campaign_id == "spring-2026"
        assert event.evidence == evidence
        assert event.reason is None
        assert event.context["actor_kind"] == "api_client"
        assert event.context["user_agent"] == "testclient"
        assert event.recorded_at >= event.occurred_at

    def test_source_defaults_to_api(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        record_change(client, writer_headers, ADA, "subscribed", topic=newsletter)

        event = audit_events(database)[-1]
        assert event.source == "api"
        assert event.evidence == {}
        assert event.campaign_id is None

    def test_every_answered_change_writes_one_event_and_seq_has_no_gaps(
        self,
        client: TestClient,
        writer_headers: Headers,
        admin_headers: Headers,
        database: Database,
        newsletter: str,
    ) -> None:
        answered = 1  # the topic
        outcomes: list[int] = []
        requests: list[dict[str, object]] = [
            {"email": ADA, "topic": newsletter, "status": "subscribed"},
            {"email": ADA, "topic": newsletter, "status": "unsubscribed", "source": "one_click"},
            {"email": ADA, "topic": newsletter, "status": "subscribed"},  # 409
            {"email": ADA, "topic": "missing", "status": "subscribed"},  # 422
            {"email": "bob@example.com", "status": "unsubscribed"},
            {"email": "not an address", "status": "unsubscribed"},  # 422
            {
                "email": ADA,
                "topic": newsletter,
                "status": "unsubscribed",
                "occurred_at": "2020-01-01T00:00:00Z",
            },
            {"email": "carol@example.com", "topic": newsletter, "status": "subscribed"},
        ]
        for body in requests:
            response = client.post("/v1/consents", headers=writer_headers, json=body)
            outcomes.append(response.status_code)
            if response.status_code == 200:
                answered += 1
                assert audit_events(database)[-1].id == response.json()["event_id"]
        make_topic(client, admin_headers, "receipts", kind="transactional")
        answered += 1

        assert outcomes == [200, 200, 409, 422, 200, 422, 200, 200]
        seqs = [event.seq for event in audit_events(database)]
        assert seqs == list(range(1, answered + 1))
        assert audit_head_seq(database) == answered
        assert len({event.id for event in audit_events(database)}) == answered


class TestPostConsentsAuth:
    def test_read_only_key_is_forbidden(
        self, client: TestClient, database: Database, newsletter: str
    ) -> None:
        reader = issue_key(database, Scope.CONSENT_READ, Scope.ELIGIBILITY, name="reader")
        before = row_counts(database)

        response = client.post(
            "/v1/consents",
            headers=reader,
            json={"email": ADA, "topic": newsletter, "status": "subscribed"},
        )

        problem = assert_problem(response, 403, "forbidden")
        assert "consent:write" in problem["detail"]
        assert row_counts(database) == before

    def test_write_only_key_may_record(
        self, client: TestClient, database: Database, newsletter: str
    ) -> None:
        writer = issue_key(database, Scope.CONSENT_WRITE, name="writer")

        answer = record_change(client, writer, ADA, "subscribed", topic=newsletter)

        assert answer["status"] == "subscribed"

    def test_missing_key_is_401(
        self, client: TestClient, database: Database, newsletter: str
    ) -> None:
        before = row_counts(database)

        response = client.post(
            "/v1/consents", json={"email": ADA, "topic": newsletter, "status": "subscribed"}
        )

        assert_problem(response, 401, "unauthenticated")
        assert row_counts(database) == before
