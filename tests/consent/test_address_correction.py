"""Address correction (`PATCH /v1/contacts/{contact_id}`): the support desk gives a contact its
corrected address; the contact keeps its id and history, the old address goes into no event."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select

from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.models import AuditEvent
from prefcenter.audit.reading import events_of_contact
from prefcenter.consent.contact_creation import readdress_contact
from prefcenter.consent.erased import AddressErased
from prefcenter.consent.models import ErasedAddress
from prefcenter.contacts.addresses import parse_address
from prefcenter.contacts.models import Contact
from prefcenter.db import Database, utcnow
from prefcenter.settings import Settings
from tests.support.factories import (
    Headers,
    Json,
    assert_problem,
    error_fields,
    lookup,
    make_contact,
    make_topic,
    record_change,
    row_counts,
)

ADA = "ada@example.com"


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


class TestReaddressContact:
    """The write model's half of a correction (consent.contact_creation), on a session."""

    def test_gives_the_contact_the_address(self, database: Database) -> None:
        with database.transaction(write=True) as session:
            contact = make_contact(session, "ada@exmaple.com")
            readdress_contact(
                session,
                AuditKeys.from_settings(database.settings),
                contact,
                parse_address("Ada@Example.com"),
            )
            assert (contact.address, contact.address_display) == (ADA, "Ada@Example.com")
        with database.transaction(write=False) as session:
            stored = session.exec(select(Contact.address)).all()
        assert stored == [ADA]

    def test_an_erased_address_is_refused_in_the_statement_itself(
        self, database: Database, settings: Settings
    ) -> None:
        keys = AuditKeys.from_settings(settings)
        with database.transaction(write=True) as session:
            session.add(ErasedAddress(address_hash=keys.address_hash(ADA), erased_at=utcnow()))
            contact = make_contact(session, "ada@exmaple.com")
        with database.transaction(write=True) as session:
            contact = make_contact(session, "ada@exmaple.com")
            with pytest.raises(AddressErased):
                readdress_contact(session, keys, contact, parse_address(ADA))
            # Not even for the instant before the rollback: the row never held it.
            assert session.exec(select(Contact.address)).all() == ["ada@exmaple.com"]
