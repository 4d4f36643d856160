"""Support-desk changes: an admin records an opt-out that came by mail or phone with a reason,
reverses a person's opt-out only with a reason and evidence, and corrects an address
(`PATCH /v1/contacts/{contact_id}`)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select

from prefcenter.audit.models import AuditEvent
from prefcenter.audit.reading import events_of_contact
from prefcenter.consent.errors import EvidenceRequired, ReasonRequired
from prefcenter.consent.rules import (
    ActorKind,
    CurrentState,
    Outcome,
    RequestedChange,
    Status,
    check_support_reason,
    decide_change,
)
from prefcenter.db import Database
from tests.support.factories import (
    Headers,
    Json,
    assert_problem,
    audit_events,
    error_fields,
    lookup,
    make_topic,
    record_change,
    row_counts,
)

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
ADA = "ada@example.com"


def admin_change(
    source: str, reason: str | None, *, with_evidence: bool = False
) -> RequestedChange:
    return RequestedChange(
        status=Status.SUBSCRIBED,
        occurred_at=NOW,
        actor=ActorKind.ADMIN,
        source=source,
        reason=reason,
        with_evidence=with_evidence,
    )


class TestRules:
    @pytest.mark.parametrize("source", ["support", "email", "phone"])
    def test_a_support_source_needs_a_reason_from_an_admin(self, source: str) -> None:
        for reason in (None, "", "  "):
            with pytest.raises(ReasonRequired):
                check_support_reason(admin_change(source, reason))
        check_support_reason(admin_change(source, "ticket 9"))

    def test_other_sources_and_api_clients_need_none(self) -> None:
        check_support_reason(admin_change("api", None))
        check_support_reason(
            RequestedChange(Status.UNSUBSCRIBED, NOW, ActorKind.API_CLIENT, "support")
        )

    def test_reversing_a_person_s_opt_out_needs_reason_and_evidence(self) -> None:
        opt_out = CurrentState(
            Status.UNSUBSCRIBED, datetime(2026, 1, 1, tzinfo=UTC), by_recipient=True
        )
        with pytest.raises(ReasonRequired):
            decide_change(opt_out, admin_change("api", None, with_evidence=True), now=NOW)
        with pytest.raises(EvidenceRequired):
            decide_change(opt_out, admin_change("api", "ticket 9"), now=NOW)
        decision = decide_change(
            opt_out, admin_change("api", "ticket 9", with_evidence=True), now=NOW
        )
        assert decision.outcome is Outcome.APPLIED


class TestSupportOptOut:
    @pytest.mark.parametrize("source", ["support", "email", "phone"])
    def test_without_a_reason_is_a_422(
        self, client: TestClient, admin_headers: Headers, database: Database, source: str
    ) -> None:
        before = row_counts(database)
        response = client.post(
            "/v1/consents",
            headers=admin_headers,
            json={"email": ADA, "status": "unsubscribed", "source": source, "reason": " "},
        )
        assert_problem(response, 422, "reason-required")
        assert row_counts(database) == before

    def test_is_recorded_with_the_reason_and_the_staff_member(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        database: Database,
    ) -> None:
        answer = record_change(
            client,
            admin_headers,
            ADA,
            "unsubscribed",
            source="phone",
            reason="Called on 25 Nov, ticket 88",
        )

        (event,) = [e for e in audit_events(database) if e.id == answer["event_id"]]
        assert event.reason == "Called on 25 Nov, ticket 88"
        assert event.actor.endswith(":admin")  # the key's name: the staff member
        assert event.source == "phone"
        (ada,) = lookup(client, writer_headers, ADA)
        assert ada["suppressed"] is True
        # The person asked: an API client cannot undo it.
        record_change(client, writer_headers, ADA, "subscribed", expect=409)


class TestAdminResubscribe:
    def test_needs_evidence_after_a_person_s_opt_out(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        database: Database,
    ) -> None:
        make_topic(client, admin_headers, "news")
        record_change(client, writer_headers, ADA, "unsubscribed", topic="news", source="one_click")
        before = row_counts(database)

        response = client.post(
            "/v1/consents",
            headers=admin_headers,
            json={"email": ADA, "topic": "news", "status": "subscribed", "reason": "asked"},
        )

        assert_problem(response, 422, "evidence-required")
        assert row_counts(database) == before
        answer = record_change(
            client,
            admin_headers,
            ADA,
            "subscribed",
            topic="news",
            reason="asked",
            evidence={"letter": "scan-17.pdf"},
        )
        assert answer["changed"] is True


class TestCorrectAddress:
    @pytest.fixture
    def ada(self, client: TestClient, admin_headers: Headers, writer_headers: Headers) -> str:
        make_topic(client, admin_headers, "news")
        answer = record_change(
            client, writer_headers, "ada@exmaple.com", "subscribed", topic="news"
        )
        contact_id: str = answer["contact_id"]
        return contact_id

    def patch(self, client: TestClient, headers: Headers, contact_id: str, **body: str) -> Json:
        response = client.patch(f"/v1/contacts/{contact_id}", headers=headers, json=body)
        assert response.status_code == 200, response.text
        answer: Json = response.json()
        return answer

    def test_changes_the_address_and_keeps_everything_else(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        database: Database,
        ada: str,
    ) -> None:
        answer = self.patch(
            client, admin_headers, ada, address="Ada@Example.com", reason="Typo, ticket 5"
        )

        assert answer["changed"] is True
        assert answer["email"] == "Ada@Example.com"
        old, new = lookup(client, writer_headers, "ada@exmaple.com", ADA)
        assert old["contact_id"] is None
        assert new["contact_id"] == ada
        assert [s["topic"] for s in new["subscriptions"]] == ["news"]
        with database.transaction(write=False) as session:
            events = list(
                session.exec(
                    select(AuditEvent)
                    .where(AuditEvent.contact_id == ada)
                    .order_by(col(AuditEvent.seq))
                )
            )
            last = events_of_contact(session, ada)[-1]
        assert (last.id, last.kind, last.reason) == (
            answer["event_id"],
            "address_change",
            "Typo, ticket 5",
        )
        assert events[-1].address_hash != events[0].address_hash
        # The old address is in no event: only keyed hashes are.
        assert all(b"exmaple" not in bytes(e.canonical) for e in events)

    def test_the_trail_finds_the_contact_by_either_address(
        self, client: TestClient, admin_headers: Headers, ada: str
    ) -> None:
        self.patch(client, admin_headers, ada, address=ADA, reason="Typo")

        by_new = client.get("/v1/audit", headers=admin_headers, params={"email": ADA}).json()
        by_old = client.get(
            "/v1/audit", headers=admin_headers, params={"email": "ada@exmaple.com"}
        ).json()

        assert [e["kind"] for e in by_new["events"]] == ["consent_change", "address_change"]
        assert [e["kind"] for e in by_old["events"]] == ["consent_change"]

    def test_the_same_address_changes_nothing(
        self, client: TestClient, admin_headers: Headers, database: Database, ada: str
    ) -> None:
        before = row_counts(database)
        answer = self.patch(client, admin_headers, ada, address="ADA@exmaple.com", reason="x")
        assert (answer["changed"], answer["event_id"]) == (False, None)
        assert row_counts(database) == before

    def test_another_contact_s_address_is_a_409(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        database: Database,
        ada: str,
    ) -> None:
        record_change(client, writer_headers, "bob@example.com", "unsubscribed")
        before = row_counts(database)

        response = client.patch(
            f"/v1/contacts/{ada}",
            headers=admin_headers,
            json={"address": "Bob@example.com", "reason": "merge?"},
        )

        assert "address" in error_fields(assert_problem(response, 409, "address-taken"))
        assert row_counts(database) == before

    def test_an_erased_address_is_a_409(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        ada: str,
    ) -> None:
        bob = record_change(client, writer_headers, "bob@example.com", "unsubscribed")
        erased = client.delete(f"/v1/contacts/{bob['contact_id']}", headers=admin_headers)
        assert erased.status_code == 200

        response = client.patch(
            f"/v1/contacts/{ada}",
            headers=admin_headers,
            json={"address": "bob@example.com", "reason": "x"},
        )

        assert_problem(response, 409, "address-erased")

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"address": ADA}, "reason"),
            ({"address": ADA, "reason": "  "}, "reason"),
            ({"address": "not an address", "reason": "x"}, "address"),
            ({"address": ADA, "reason": "x", "email": ADA}, "email"),
        ],
    )
    def test_bad_body_is_a_422(
        self, client: TestClient, admin_headers: Headers, ada: str, body: Json, field: str
    ) -> None:
        response = client.patch(f"/v1/contacts/{ada}", headers=admin_headers, json=body)
        assert field in error_fields(assert_problem(response, 422))

    def test_unknown_or_erased_contact_is_a_404(
        self, client: TestClient, admin_headers: Headers, ada: str
    ) -> None:
        body = {"address": ADA, "reason": "x"}
        assert_problem(client.patch("/v1/contacts/nobody", headers=admin_headers, json=body), 404)
        client.delete(f"/v1/contacts/{ada}", headers=admin_headers)
        assert_problem(client.patch(f"/v1/contacts/{ada}", headers=admin_headers, json=body), 404)

    def test_needs_an_admin_key(
        self, client: TestClient, writer_headers: Headers, ada: str
    ) -> None:
        response = client.patch(
            f"/v1/contacts/{ada}", headers=writer_headers, json={"address": ADA, "reason": "x"}
        )
        assert_problem(response, 403)
