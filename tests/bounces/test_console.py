"""A bounce on the console's contact page, and lifting it there with a reason."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlmodel import select

from prefcenter.bounces.rules import BounceKind, SoftBouncePolicy
from prefcenter.bounces.schemas import BouncedContact, BounceReport
from prefcenter.bounces.service import record_bounces
from prefcenter.contacts.models import Contact
from prefcenter.db import Database, utcnow
from tests.admin.console import page_token, sign_in_with_key
from tests.support.factories import Headers, audit_events, make_topic, record_change, row_counts


def bounced_contact(client: TestClient, headers: Headers, database: Database) -> str:
    make_topic(client, headers, "newsletter")
    answer = record_change(
        client, headers, "ada@example.com", "subscribed", topic="newsletter", source="form"
    )
    with database.transaction(write=True) as session:
        contact = session.exec(select(Contact).where(Contact.address == "ada@example.com")).one()
        assert contact.id is not None
        record_bounces(
            session,
            [
                BounceReport(
                    contact=BouncedContact(contact.id, contact.public_id, "ada@example.com"),
                    kind=BounceKind.HARD,
                    occurred_at=utcnow() - timedelta(minutes=5),
                    actor="esp:ses",
                    source="ses",
                    evidence={"esp": "ses", "esp_event_id": "m-1", "type": "Bounce"},
                )
            ],
            policy=SoftBouncePolicy(limit=3, window=timedelta(days=7)),
            now=utcnow(),
        )
    return str(answer["contact_id"])


def eligibility(client: TestClient, headers: Headers) -> str:
    response = client.post(
        "/v1/eligibility",
        headers=headers,
        json={"topic": "newsletter", "emails": ["ada@example.com"]},
    )
    return str(response.json()["results"][0]["reason"])


def test_the_page_shows_the_bounce_and_lifts_it_with_a_reason(
    client: TestClient, admin_headers: Headers, database: Database
) -> None:
    contact_id = bounced_contact(client, admin_headers, database)
    sign_in_with_key(client, admin_headers)
    page = client.get(f"/admin/contacts/{contact_id}")
    assert "<strong>bounced</strong>" in page.text
    assert "Lift the bounce" in page.text
    token = page_token(client, f"/admin/contacts/{contact_id}")

    before = row_counts(database)
    refused = client.post(
        f"/admin/contacts/{contact_id}/bounce/lift", data={"csrf_token": token, "reason": " "}
    )
    assert refused.status_code == 422
    assert row_counts(database) == before
    assert eligibility(client, admin_headers) == "bounced"

    lifted = client.post(
        f"/admin/contacts/{contact_id}/bounce/lift",
        data={"csrf_token": token, "reason": "The mailbox works again (ticket 7)"},
        follow_redirects=False,
    )
    assert lifted.status_code == 303
    event = audit_events(database)[-1]
    assert (event.kind, event.reason) == ("bounce_lifted", "The mailbox works again (ticket 7)")
    assert event.actor == "api_key:1:admin"  # who signed in to the console
    assert eligibility(client, admin_headers) == "subscribed"


def test_lifting_needs_the_form_token(
    client: TestClient, admin_headers: Headers, database: Database
) -> None:
    contact_id = bounced_contact(client, admin_headers, database)
    sign_in_with_key(client, admin_headers)
    answer = client.post(
        f"/admin/contacts/{contact_id}/bounce/lift",
        data={"csrf_token": "wrong", "reason": "x"},
    )
    assert answer.status_code == 403
    assert eligibility(client, admin_headers) == "bounced"
