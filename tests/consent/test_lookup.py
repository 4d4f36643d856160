"""`POST /v1/contacts/lookup` and `GET /v1/contacts/{contact_id}`: the read side of consent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from prefcenter.apikeys.schemas import Scope
from prefcenter.audit.keys import AuditKeys
from prefcenter.bounces.models import Bounce
from prefcenter.consent.queries import lookup_contacts
from prefcenter.consent.schemas import MAX_LOOKUP
from prefcenter.contacts.addresses import parse_address
from prefcenter.contacts.models import Contact
from prefcenter.db import Database
from tests.support.factories import (
    Headers,
    assert_problem,
    audit_events,
    error_fields,
    lookup,
    make_topic,
    record_change,
    row_counts,
    subscription_status,
)
from tests.support.harness import issue_key

ADA = "ada@example.com"


def hours_ago(hours: float) -> datetime:
    return datetime.now(UTC) - timedelta(hours=hours)


class TestPostContactsLookup:
    def test_answers_in_request_order_echoing_each_address_as_given(
        self, client: TestClient, writer_headers: Headers, reader_headers: Headers, newsletter: str
    ) -> None:
        bob = record_change(
            client, writer_headers, "bob@example.com", "subscribed", topic=newsletter
        )
        ada = record_change(client, writer_headers, ADA, "unsubscribed", topic=newsletter)
        asked = ["Bob@Example.com", "nobody@example.com", "ADA@example.COM", "bob@example.com"]

        contacts = lookup(client, reader_headers, *asked)

        assert [c["email"] for c in contacts] == asked
        assert [c["contact_id"] for c in contacts] == [
            bob["contact_id"],
            None,
            ada["contact_id"],
            bob["contact_id"],
        ]

    def test_known_contact_lists_its_subscriptions(
        self, client: TestClient, writer_headers: Headers, admin_headers: Headers, newsletter: str
    ) -> None:
        make_topic(client, admin_headers, "alerts", double_opt_in=True)
        make_topic(client, admin_headers, "offers")
        before = datetime.now(UTC)
        record_change(client, writer_headers, ADA, "subscribed", topic=newsletter)
        record_change(client, writer_headers, ADA, "subscribed", topic="alerts")
        record_change(client, writer_headers, ADA, "unsubscribed", topic="offers")
        after = datetime.now(UTC)

        (ada,) = lookup(client, writer_headers, ADA)

        assert ada["suppressed"] is False
        assert [(s["topic"], s["status"]) for s in ada["subscriptions"]] == [
            ("alerts", "pending"),
            ("newsletter", "subscribed"),
            ("offers", "unsubscribed"),
        ]
        for subscription in ada["subscriptions"]:
            assert before <= datetime.fromisoformat(subscription["since"]) <= after

    def test_since_is_when_the_status_last_changed(
        self, client: TestClient, writer_headers: Headers, newsletter: str
    ) -> None:
        record_change(client, writer_headers, ADA, "subscribed", topic=newsletter)
        (first,) = lookup(client, writer_headers, ADA)

        record_change(client, writer_headers, ADA, "subscribed", topic=newsletter)
        (repeated,) = lookup(client, writer_headers, ADA)
        record_change(client, writer_headers, ADA, "unsubscribed", topic=newsletter)
        (changed,) = lookup(client, writer_headers, ADA)

        assert repeated["subscriptions"] == first["subscriptions"]
        assert datetime.fromisoformat(
            changed["subscriptions"][0]["since"]
        ) > datetime.fromisoformat(first["subscriptions"][0]["since"])

    def test_unknown_address_has_no_contact_id(
        self, client: TestClient, reader_headers: Headers
    ) -> None:
        (nobody,) = lookup(client, reader_headers, "nobody@example.com")

        assert nobody == {
            "email": "nobody@example.com",
            "contact_id": None,
            "suppressed": False,
            "subscriptions": [],
            "bounced": False,
        }

    def test_global_opt_out_shows_as_suppressed(
        self, client: TestClient, writer_headers: Headers, reader_headers: Headers
    ) -> None:
        record_change(client, writer_headers, ADA, "unsubscribed")
        record_change(client, writer_headers, "bob@example.com", "subscribed")

        ada, bob = lookup(client, reader_headers, ADA, "bob@example.com")

        assert ada["suppressed"] is True
        assert ada["subscriptions"] == []
        assert bob["suppressed"] is False

    def test_addresses_match_ignoring_case_and_idn_form(
        self, client: TestClient, writer_headers: Headers, reader_headers: Headers, newsletter: str
    ) -> None:
        recorded = record_change(
            client, writer_headers, "ada@bücher.de", "subscribed", topic=newsletter
        )

        forms = [
            "ADA@XN--BCHER-KVA.DE",
            "Ada@Bücher.DE",
            "ada@xn--bcher-kva.de",
            "ada@bu\u0308cher.de",
        ]
        contacts = lookup(client, reader_headers, *forms)

        assert [c["email"] for c in contacts] == forms
        assert {c["contact_id"] for c in contacts} == {recorded["contact_id"]}
        assert all(subscription_status(c, newsletter) == "subscribed" for c in contacts)

    def test_unicode_local_part_matches_in_nfc(
        self, client: TestClient, writer_headers: Headers, reader_headers: Headers
    ) -> None:
        recorded = record_change(client, writer_headers, "jos\u00e9@example.com", "unsubscribed")

        (decomposed,) = lookup(client, reader_headers, "jose\u0301@example.com")

        assert decomposed["contact_id"] == recorded["contact_id"]
        assert decomposed["suppressed"] is True

    def test_different_addresses_do_not_match(
        self, client: TestClient, writer_headers: Headers, reader_headers: Headers
    ) -> None:
        record_change(client, writer_headers, "ada@bücher.de", "unsubscribed")

        contacts = lookup(
            client,
            reader_headers,
            "ada@bucher.de",
            "ada@x.bücher.de",
            "ad@bücher.de",
        )

        assert [c["contact_id"] for c in contacts] == [None, None, None]

    def test_invalid_address_is_422_naming_its_index(
        self, client: TestClient, reader_headers: Headers, subtests: pytest.Subtests
    ) -> None:
        bad_addresses = [
            "not-an-address",
            "ada@",
            "@example.com",
            "ada@example.com\r\nBcc: x@example.com",
            "a\x00@example.com",
        ]
        for bad in bad_addresses:
            with subtests.test(bad=bad):
                response = client.post(
                    "/v1/contacts/lookup",
                    headers=reader_headers,
                    json={"emails": ["ada@example.com", "bob@example.com", bad]},
                )

                problem = assert_problem(response, 422, "validation")
                assert error_fields(problem) == ["emails[2]"]
                assert "emails[2]" in problem["detail"]

    def test_up_to_the_limit_is_answered(
        self, client: TestClient, writer_headers: Headers, reader_headers: Headers
    ) -> None:
        record_change(client, writer_headers, "user999@example.com", "unsubscribed")
        emails = [f"user{i}@example.com" for i in range(MAX_LOOKUP)]

        contacts = lookup(client, reader_headers, *emails)

        assert len(contacts) == MAX_LOOKUP
        assert [c["email"] for c in contacts] == emails
        assert [c["suppressed"] for c in contacts].count(True) == 1
        assert contacts[999]["suppressed"] is True

    def test_more_than_the_limit_is_422(self, client: TestClient, reader_headers: Headers) -> None:
        emails = [f"user{i}@example.com" for i in range(MAX_LOOKUP + 1)]

        response = client.post(
            "/v1/contacts/lookup", headers=reader_headers, json={"emails": emails}
        )

        assert error_fields(assert_problem(response, 422, "validation")) == ["emails"]

    def test_malformed_request_is_422(
        self, client: TestClient, reader_headers: Headers, subtests: pytest.Subtests
    ) -> None:
        cases: list[tuple[dict[str, object], str]] = [
            ({"emails": []}, "emails"),
            ({}, "emails"),
            ({"emails": "ada@example.com"}, "emails"),
            ({"emails": [ADA, 42]}, "emails[1]"),
            ({"emails": [ADA], "topic": "x"}, "topic"),
        ]
        for body, field in cases:
            with subtests.test(body=body):
                response = client.post("/v1/contacts/lookup", headers=reader_headers, json=body)

                assert error_fields(assert_problem(response, 422, "validation")) == [field]

    def test_lookup_changes_nothing(
        self, client: TestClient, reader_headers: Headers, database: Database
    ) -> None:
        before = row_counts(database)

        lookup(client, reader_headers, "new@example.com", "other@example.com")

        assert row_counts(database) == before

    def test_consent_write_scope_alone_is_forbidden(
        self, client: TestClient, database: Database
    ) -> None:
        writer_only = issue_key(database, Scope.CONSENT_WRITE, name="writer")

        response = client.post("/v1/contacts/lookup", headers=writer_only, json={"emails": [ADA]})

        problem = assert_problem(response, 403, "forbidden")
        assert "consent:read" in problem["detail"]

    def test_missing_key_is_401(self, client: TestClient) -> None:
        response = client.post("/v1/contacts/lookup", json={"emails": [ADA]})

        assert_problem(response, 401, "unauthenticated")


class TestGetContact:
    def test_whole_history_in_seq_order(
        self,
        client: TestClient,
        writer_headers: Headers,
        admin_headers: Headers,
        reader_headers: Headers,
        database: Database,
        newsletter: str,
    ) -> None:
        make_topic(client, admin_headers, "offers", consent="opt_out")
        answers = [
            record_change(
                client,
                writer_headers,
                ADA,
                "subscribed",
                topic=newsletter,
                occurred_at=hours_ago(3),
            ),
            record_change(
                client, writer_headers, "bob@example.com", "subscribed", topic=newsletter
            ),
            record_change(
                client, writer_headers, ADA, "unsubscribed", topic="offers", source="one_click"
            ),
            record_change(
                client,
                writer_headers,
                ADA,
                "unsubscribed",
                topic=newsletter,
                occurred_at=hours_ago(4),
            ),
            record_change(client, writer_headers, ADA, "unsubscribed", evidence={"ticket": 17}),
        ]
        ada_answers = [a for a in answers if a["email"] == ADA]
        contact_id = ada_answers[0]["contact_id"]

        response = client.get(f"/v1/contacts/{contact_id}", headers=reader_headers)

        assert response.status_code == 200
        contact = response.json()
        assert contact["contact_id"] == contact_id
        assert contact["email"] == ADA
        events = contact["events"]
        assert [e["id"] for e in events] == [a["event_id"] for a in ada_answers]
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs)
        stored = {e.id: e.seq for e in audit_events(database)}
        assert seqs == [stored[e["id"]] for e in events]
        assert [(e["topic"], e["to_status"], e["outcome"]) for e in events] == [
            (newsletter, "subscribed", "applied"),
            ("offers", "unsubscribed", "applied"),
            (newsletter, "unsubscribed", "superseded"),
            (None, "unsubscribed", "applied"),
        ]
        assert [e["source"] for e in events] == ["api", "one_click", "api", "api"]
        # A consent reader sees no evidence and no request context (client address, user
        # agent, ticket ids): those are for readers of the audit trail.
        for event in events:
            assert "evidence" not in event
            assert "context" not in event
        auditor = issue_key(database, Scope.CONSENT_READ, Scope.AUDIT_READ, name="auditor")
        full = client.get(f"/v1/contacts/{contact_id}", headers=auditor).json()["events"]
        assert full[3]["evidence"] == {"ticket": 17}
        assert full[3]["context"]["user_agent"] == "testclient"
        for event in full:
            assert event["contact_id"] == contact_id
            assert set(event) >= {
                "id",
                "seq",
                "contact_id",
                "topic",
                "from_status",
                "to_status",
                "occurred_at",
                "recorded_at",
                "actor",
                "source",
                "evidence",
                "context",
            }
            assert datetime.fromisoformat(event["occurred_at"]).tzinfo is not None

    def test_shows_subscriptions_and_suppression(
        self, client: TestClient, writer_headers: Headers, reader_headers: Headers, newsletter: str
    ) -> None:
        recorded = record_change(
            client, writer_headers, "Ada@Example.com", "subscribed", topic=newsletter
        )
        record_change(client, writer_headers, ADA, "unsubscribed", source="support")

        contact = client.get(
            f"/v1/contacts/{recorded['contact_id']}", headers=reader_headers
        ).json()

        assert contact["email"] == "Ada@Example.com"
        assert contact["erased_at"] is None
        assert contact["suppressed"] is True
        assert contact["suppression"]["suppressed"] is True
        assert contact["suppression"]["source"] == "support"
        assert contact["suppression"]["by_recipient"] is True
        assert [(s["topic"], s["status"]) for s in contact["subscriptions"]] == [
            (newsletter, "subscribed")
        ]

    def test_contact_without_global_change_has_no_suppression(
        self, client: TestClient, writer_headers: Headers, reader_headers: Headers, newsletter: str
    ) -> None:
        recorded = record_change(client, writer_headers, ADA, "subscribed", topic=newsletter)

        contact = client.get(
            f"/v1/contacts/{recorded['contact_id']}", headers=reader_headers
        ).json()

        assert contact["suppressed"] is False
        assert contact["suppression"] is None

    def test_unknown_or_malformed_id_is_404(
        self,
        client: TestClient,
        writer_headers: Headers,
        reader_headers: Headers,
        newsletter: str,
        subtests: pytest.Subtests,
    ) -> None:
        record_change(client, writer_headers, ADA, "subscribed", topic=newsletter)
        contact_ids = [
            "AAAAAAAAAAAAAAAA",
            "not%20an%20id",
            "x" * 33,
            "x" * 2000,
            "%00abc",
            "abc%0D%0A",
            "%E2%98%83",
            "%27%20OR%201%3D1--",
        ]
        for contact_id in contact_ids:
            with subtests.test(contact_id=contact_id):
                response = client.get(f"/v1/contacts/{contact_id}", headers=reader_headers)

                assert_problem(response, 404, "contact-not-found")

    def test_row_id_is_not_a_contact_id(
        self, client: TestClient, writer_headers: Headers, reader_headers: Headers, newsletter: str
    ) -> None:
        record_change(client, writer_headers, ADA, "subscribed", topic=newsletter)

        assert_problem(client.get("/v1/contacts/1", headers=reader_headers), 404)

    def test_consent_write_scope_alone_is_forbidden(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        recorded = record_change(client, writer_headers, ADA, "subscribed", topic=newsletter)
        writer_only = issue_key(database, Scope.CONSENT_WRITE, Scope.LINKS, name="writer")

        response = client.get(f"/v1/contacts/{recorded['contact_id']}", headers=writer_only)

        assert_problem(response, 403, "forbidden")

    def test_missing_key_is_401(
        self, client: TestClient, writer_headers: Headers, newsletter: str
    ) -> None:
        recorded = record_change(client, writer_headers, ADA, "subscribed", topic=newsletter)

        response = client.get(f"/v1/contacts/{recorded['contact_id']}")

        assert_problem(response, 401, "unauthenticated")
        assert "contact_id" not in response.json()


class TestLookupAnswerMatchesTheModel:
    """The lookup writes its JSON itself on PostgreSQL (consent.lookup); it must be the
    `LookupOut` document the ORM read (consent.queries) gives, field for field."""

    def test_every_kind_of_address_answers_as_the_orm_read(
        self,
        client: TestClient,
        writer_headers: Headers,
        admin_headers: Headers,
        database: Database,
        newsletter: str,
    ) -> None:
        make_topic(client, admin_headers, "alerts", double_opt_in=True)
        record_change(client, writer_headers, ADA, "subscribed", topic=newsletter)
        record_change(client, writer_headers, ADA, "subscribed", topic="alerts")
        record_change(client, writer_headers, "bob@example.com", "unsubscribed")
        record_change(client, writer_headers, "cy@example.com", "subscribed", topic=newsletter)
        erased = record_change(client, writer_headers, "eve@example.com", "subscribed")
        assert (
            client.delete(f"/v1/contacts/{erased['contact_id']}", headers=admin_headers)
        ).status_code == 200
        with database.transaction(write=True) as session:
            cy = session.exec(select(Contact).where(Contact.address == "cy@example.com")).one()
            assert cy.id is not None
            now = datetime.now(UTC)
            session.add(
                Bounce(
                    contact_id=cy.id,
                    bounced=True,
                    occurred_at=now,
                    since=now,
                    source="admin",
                    event_id="bench",
                )
            )
        asked = [
            "ADA@example.com",
            "bob@example.com",
            "cy@example.com",
            "eve@example.com",
            "nobody@example.com",
            ADA,
        ]

        response = client.post(
            "/v1/contacts/lookup", headers=writer_headers, json={"emails": asked}
        )

        assert response.status_code == 200
        keys = AuditKeys.from_settings(database.settings)
        with database.transaction(write=False) as session:
            expected = lookup_contacts(
                session, [parse_address(a) for a in asked], keys=keys, now=datetime.now(UTC)
            ).model_dump(mode="json")
        assert response.json() == expected
        answers = response.json()["contacts"]
        assert [a["suppressed"] for a in answers] == [False, True, False, True, False, False]
        assert [a["bounced"] for a in answers] == [False, False, True, False, False, False]
        assert answers[3]["contact_id"] is None
