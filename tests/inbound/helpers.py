"""What the inbound tests ask of the database and the API."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import col, select

from prefcenter.bounces.models import Bounce
from prefcenter.contacts.models import Contact
from prefcenter.db import Database
from prefcenter.inbound.models import InboundReceipt
from tests.support.factories import Headers, count_rows, row_counts


def written(database: Database) -> dict[str, int]:
    """Row counts of every table an inbound request could write."""
    counts = row_counts(database)
    counts["Bounce"] = count_rows(database, Bounce)
    counts["InboundReceipt"] = count_rows(database, InboundReceipt)
    return counts


def eligibility(client: TestClient, headers: Headers, topic: str, *emails: str) -> list[str]:
    response = client.post(
        "/v1/eligibility", headers=headers, json={"topic": topic, "emails": list(emails)}
    )
    assert response.status_code == 200, response.text
    return [str(r["reason"]) for r in response.json()["results"]]


# Before the ESPs' samples are dated (2016-2019): their events are newer than the consent.
SUBSCRIBED_AT = "2015-01-01T00:00:00Z"


def subscribe(
    client: TestClient, headers: Headers, email: str, topic: str, *, at: str = SUBSCRIBED_AT
) -> Any:
    response = client.post(
        "/v1/consents",
        headers=headers,
        json={
            "email": email,
            "topic": topic,
            "status": "subscribed",
            "source": "signup_form",
            "occurred_at": at,
        },
    )
    assert response.status_code == 200, response.text
    return response.json()


def bounce_row(database: Database, email: str) -> Bounce | None:
    with database.transaction(write=False) as session:
        return session.exec(
            select(Bounce)
            .join(Contact, col(Contact.id) == col(Bounce.contact_id))
            .where(Contact.address == email)
        ).first()
