"""`DELETE /v1/contacts/{contact_id}`: the address leaves every table and export, the person
stays suppressed, the chain still verifies, and the address cannot come back by API."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Column, LargeBinary, String, TypeDecorator, select
from sqlmodel import col
from sqlmodel import select as sqlmodel_select

from prefcenter.apikeys.schemas import Scope
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.models import AuditEvent
from prefcenter.consent.contact_creation import insert_contacts, lock_new_contact
from prefcenter.consent.erased import AddressErased, erased_among, is_erased_address
from prefcenter.contacts.addresses import parse_address
from prefcenter.contacts.models import Contact
from prefcenter.db import Database, utcnow
from prefcenter.settings import Settings
from prefcenter.tables import metadata
from tests.support.factories import (
    Headers,
    Json,
    assert_problem,
    lookup,
    make_topic,
    record_change,
    row_counts,
)
from tests.support.harness import issue_key

GIVEN = "Ada.Lovelace@Example.com"
ADDRESS = "ada.lovelace@example.com"


@pytest.fixture
def auditor_headers(database: Database) -> Headers:
    return issue_key(database, Scope.AUDIT_READ, Scope.ELIGIBILITY, name="auditor")


@pytest.fixture
def ada(client: TestClient, admin_headers: Headers, writer_headers: Headers) -> str:
    """Ada, with consents on three kinds of topic, evidence that names her, and a stored answer
    to an `Idempotency-Key` retry (which echoes her address); returns her contact id."""
    make_topic(client, admin_headers, "news")
    make_topic(client, admin_headers, "offers", consent="opt_out")
    make_topic(client, admin_headers, "receipts", kind="transactional", consent="opt_out")
    response = client.post(
        "/v1/consents",
        headers={**writer_headers, "Idempotency-Key": "k1"},
        json={
            "email": GIVEN,
            "topic": "news",
            "status": "subscribed",
            "evidence": {"typed_address": GIVEN, "ip": "203.0.113.9"},
        },
    )
    assert response.status_code == 200, response.text
    record_change(client, writer_headers, ADDRESS, "unsubscribed", topic="offers")
    record_change(client, writer_headers, "bob@example.com", "subscribed", topic="news")
    contact_id: str = response.json()["contact_id"]
    return contact_id


def erase(client: TestClient, headers: Headers, contact_id: str) -> Json:
    response = client.delete(f"/v1/contacts/{contact_id}", headers=headers)
    assert response.status_code == 200, response.text
    body: Json = response.json()
    return body


def _holds_text(column: Column[Any]) -> bool:
    kind: Any = column.type
    if isinstance(kind, TypeDecorator):
        kind = kind.impl_instance
    return isinstance(kind, String | LargeBinary)


def stored_text(database: Database) -> list[tuple[str, str, str]]:
    """Every text and binary value of every table, as (table, column, text)."""
    found = []
    with database.transaction(write=False) as session:
        for table in metadata.sorted_tables:
            columns = [c for c in table.columns if _holds_text(c)]
            if not columns:
                continue
            for row in session.execute(select(*columns)):
                for column, value in zip(columns, row, strict=True):
                    if value is None:
                        continue
                    text = (
                        bytes(value).decode("utf-8", "replace")
                        if isinstance(value, bytes | memoryview)
                        else str(value)
                    )
                    found.append((table.name, column.name, text))
    return found


class TestErase:
    def test_answers_with_the_erasure(
        self, client: TestClient, admin_headers: Headers, database: Database, ada: str
    ) -> None:
        body = erase(client, admin_headers, ada)

        assert body["contact_id"] == ada
        assert body["erased_at"]
        with database.transaction(write=False) as session:
            event = session.exec(
                sqlmodel_select(AuditEvent).order_by(col(AuditEvent.seq).desc())
            ).first()
        assert event is not None
        assert (event.id, event.kind, event.contact_id) == (body["event_id"], "erasure", ada)
        assert event.address_hash is not None
        assert event.reason is None

    def test_the_address_is_gone_from_every_table(
        self, client: TestClient, admin_headers: Headers, database: Database, ada: str
    ) -> None:
        before = stored_text(database)
        assert any(ADDRESS in text.lower() for _, _, text in before)

        erase(client, admin_headers, ada)

        after = stored_text(database)
        leaks = [
            (table, column)
            for table, column, text in after
            if ADDRESS in text.lower() or "203.0.113.9" in text
        ]
        assert leaks == []
        assert any("bob@example.com" in text for _, _, text in after)

    def test_the_address_is_gone_from_every_export(
        self,
        client: TestClient,
        admin_headers: Headers,
        auditor_headers: Headers,
        ada: str,
    ) -> None:
        erase(client, admin_headers, ada)

        for path, params in [
            ("/v1/suppressions", {}),
            ("/v1/topics/offers/audience", {}),
            ("/v1/topics/receipts/audience", {}),
            ("/v1/changes", {}),
            ("/v1/audit", {}),
            ("/v1/audit/export", {"format": "csv"}),
            ("/v1/audit/export", {"format": "jsonl"}),
            (f"/v1/contacts/{ada}", {}),
        ]:
            response = client.get(path, headers=admin_headers, params=params)
            assert response.status_code == 200, (path, response.text)
            assert ADDRESS not in response.text.lower(), path
            assert "203.0.113.9" not in response.text, path

    def test_the_suppression_list_counts_it_without_an_address(
        self, client: TestClient, admin_headers: Headers, writer_headers: Headers, ada: str
    ) -> None:
        record_change(client, writer_headers, "cy@example.com", "unsubscribed")
        erased = erase(client, admin_headers, ada)

        response = client.get("/v1/suppressions", headers=admin_headers)

        rows = sorted(csv.DictReader(io.StringIO(response.text)), key=lambda r: r["reason"])
        assert [(r["email"], r["reason"]) for r in rows] == [
            ("", "erased"),
            ("cy@example.com", "unsubscribed_all"),
        ]
        erased_at = datetime.fromisoformat(erased["erased_at"])
        assert datetime.fromisoformat(rows[0]["since"]) == erased_at

    def test_the_contact_shows_its_erased_state(
        self, client: TestClient, admin_headers: Headers, ada: str
    ) -> None:
        erase(client, admin_headers, ada)

        contact = client.get(f"/v1/contacts/{ada}", headers=admin_headers).json()

        assert contact["email"] is None
        assert contact["erased_at"] is not None
        assert contact["suppressed"] is True
        assert contact["subscriptions"] == []
        assert all(event["evidence"] == {} for event in contact["events"])
        assert [e["kind"] for e in contact["events"]][-1] == "erasure"

    def test_the_chain_still_verifies(
        self, client: TestClient, admin_headers: Headers, ada: str
    ) -> None:
        erase(client, admin_headers, ada)

        for params in ({}, {"deep": "true"}):
            response = client.get("/v1/audit/verify", headers=admin_headers, params=params)
            assert response.status_code == 200, response.text
            assert response.json()["ok"] is True, (params, response.json())

    def test_events_stay_findable_by_the_old_address(
        self, client: TestClient, admin_headers: Headers, ada: str
    ) -> None:
        erase(client, admin_headers, ada)

        events = client.get("/v1/audit", headers=admin_headers, params={"email": GIVEN}).json()

        assert [e["kind"] for e in events["events"]] == [
            "consent_change",
            "consent_change",
            "erasure",
        ]
        assert {e["contact_id"] for e in events["events"]} == {ada}

    def test_repeating_it_changes_nothing_and_answers_the_same(
        self, client: TestClient, admin_headers: Headers, database: Database, ada: str
    ) -> None:
        first = erase(client, admin_headers, ada)
        before = row_counts(database)

        again = erase(client, admin_headers, ada)

        assert again == first
        assert row_counts(database) == before

    def test_unknown_contact_is_a_404(self, client: TestClient, admin_headers: Headers) -> None:
        for contact_id in ("nobody0000000000", "bad id", "x" * 40):
            response = client.delete(f"/v1/contacts/{contact_id}", headers=admin_headers)
            assert_problem(response, 404)

    def test_needs_an_admin_key(
        self, client: TestClient, writer_headers: Headers, database: Database, ada: str
    ) -> None:
        before = row_counts(database)
        assert_problem(client.delete(f"/v1/contacts/{ada}", headers=writer_headers), 403)
        assert row_counts(database) == before


class TestStaysSuppressed:
    @pytest.mark.parametrize("status", ["subscribed", "unsubscribed"])
    def test_an_api_change_for_the_address_is_refused(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        database: Database,
        ada: str,
        status: str,
    ) -> None:
        erase(client, admin_headers, ada)
        before = row_counts(database)

        for headers in (writer_headers, admin_headers):
            body: dict[str, Any] = {"email": ADDRESS.upper(), "status": status, "topic": "news"}
            body.update(reason="asked again", evidence={"form": "v2"})
            response = client.post("/v1/consents", headers=headers, json=body)
            assert_problem(response, 409, "address-erased")
        assert row_counts(database) == before

    def test_the_address_is_not_stored_even_for_the_instant_before_the_refusal(
        self, client: TestClient, admin_headers: Headers, database: Database, ada: str
    ) -> None:
        # lock_new_contact's insert carries the erased check itself: inside the refused
        # change's own transaction, before its rollback, there is no row with the address.
        erase(client, admin_headers, ada)
        with database.transaction(write=True) as session:
            with pytest.raises(AddressErased):
                lock_new_contact(
                    session,
                    AuditKeys.from_settings(database.settings),
                    parse_address(GIVEN),
                    now=utcnow(),
                )
            stored = session.exec(
                sqlmodel_select(Contact).where(col(Contact.address) == ADDRESS)
            ).all()
            assert stored == []

    def test_a_batch_leaves_the_erased_address_out_of_its_insert(
        self, client: TestClient, admin_headers: Headers, database: Database, ada: str
    ) -> None:
        # insert_contacts (POST /v1/consents/batch) carries the erased check in its insert too:
        # the erased address is named, and inside the transaction there is no row with it,
        # while the other address is inserted.
        erase(client, admin_headers, ada)
        keys = AuditKeys.from_settings(database.settings)
        given = {ADDRESS: GIVEN, "grace@example.com": "grace@example.com"}
        with database.transaction(write=True) as session:
            erased = insert_contacts(
                session,
                given,
                address_hashes={address: keys.address_hash(address) for address in given},
                now=utcnow(),
            )
            stored = session.exec(
                sqlmodel_select(Contact.address).where(col(Contact.address).in_(list(given)))
            ).all()
            assert erased == {ADDRESS}
            assert stored == ["grace@example.com"]

    def test_eligibility_answers_suppressed(
        self, client: TestClient, admin_headers: Headers, auditor_headers: Headers, ada: str
    ) -> None:
        erase(client, admin_headers, ada)

        for topic in ("news", "offers", "receipts"):
            response = client.post(
                "/v1/eligibility",
                headers=auditor_headers,
                json={"topic": topic, "emails": [GIVEN, "new@example.com"]},
            )
            erased, new = response.json()["results"]
            assert (erased["allowed"], erased["reason"]) == (False, "suppressed"), topic
            assert new["reason"] != "suppressed"

    def test_lookup_answers_suppressed_without_a_contact(
        self, client: TestClient, admin_headers: Headers, writer_headers: Headers, ada: str
    ) -> None:
        erase(client, admin_headers, ada)

        (entry,) = lookup(client, writer_headers, GIVEN)

        assert entry == {
            "email": GIVEN,
            "contact_id": None,
            "suppressed": True,
            "subscriptions": [],
            "bounced": False,
        }

    def test_imports_can_ask_in_bulk(
        self,
        client: TestClient,
        admin_headers: Headers,
        settings: Settings,
        database: Database,
        ada: str,
    ) -> None:
        erase(client, admin_headers, ada)
        keys = AuditKeys.from_settings(settings)

        with database.transaction(write=False) as session:
            found = erased_among(session, keys, [ADDRESS, "bob@example.com", "x@example.com"])
            assert is_erased_address(session, keys, ADDRESS)
            assert not is_erased_address(session, keys, "bob@example.com")
        assert found == {ADDRESS}
