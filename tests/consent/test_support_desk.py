"""Support-desk changes: an admin records an opt-out that came by mail or phone with a reason,
and reverses a person's opt-out only with a reason and evidence. (Correcting an address:
test_address_correction.)"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

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
    assert_problem,
    audit_events,
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
