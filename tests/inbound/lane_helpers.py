"""What the SNS lane's tests share: SES contents, and one notification recorded by the lane
(inbound.ses_record) or by the route's path (inbound.receive.record_ses), in-process."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import select

from prefcenter.audit.keys import AuditKeys
from prefcenter.bounces.models import Bounce
from prefcenter.consent.models import Suppression
from prefcenter.contacts.models import Contact
from prefcenter.db import Database
from prefcenter.inbound import receive, ses_record
from prefcenter.inbound.events import InboundEvent
from prefcenter.inbound.receive import InboundState
from prefcenter.inbound.schemas import InboundReport
from prefcenter.settings import parse_signing_keys
from tests.inbound.esp import fixture, now_text
from tests.support.harness import TEST_SIGNING_KEYS

RING = parse_signing_keys(TEST_SIGNING_KEYS)
FAST, SLOW = "fast@example.com", "slow@example.com"


def bounce(address: str, _: str = "", *, permanent: bool = True, at: str | None = None) -> Any:
    content: dict[str, Any] = fixture("ses_bounce.json")
    content["bounce"]["bouncedRecipients"][0]["emailAddress"] = address
    if not permanent:
        content["bounce"]["bounceType"] = "Transient"
    if at is not None:
        content["bounce"]["timestamp"] = at
    return content


def complaint(address: str, at: str = "") -> dict[str, Any]:
    """A complaint dated `at` (default: now, after the API's changes)."""
    content: dict[str, Any] = fixture("ses_complaint.json")
    content["complaint"]["complainedRecipients"] = [{"emailAddress": address}]
    content["complaint"]["timestamp"] = at or now_text()
    return content


def inbound_state(client: TestClient) -> InboundState:
    state: InboundState = client.app.state.inbound  # type: ignore[attr-defined]
    return state


def read_event(client: TestClient, message: dict[str, Any], *, now: datetime) -> InboundEvent:
    delivery = receive.read_ses(inbound_state(client), json.dumps(message).encode(), now=now)
    assert isinstance(delivery.notification, list)
    (event,) = delivery.notification
    return event


def lane(
    client: TestClient, database: Database, message: dict[str, Any], *, now: datetime
) -> InboundReport | None:
    event = read_event(client, message, now=now)
    keys = AuditKeys.from_settings(database.settings)
    settings = inbound_state(client).settings
    return database.on_connection(
        lambda cursor: ses_record.record_on_cursor(
            cursor, event, settings=settings, keys=keys, now=now
        )
    )


def route(
    client: TestClient, database: Database, message: dict[str, Any], *, now: datetime
) -> InboundReport:
    state = inbound_state(client)
    delivery = receive.read_ses(state, json.dumps(message).encode(), now=now)
    keys = AuditKeys.from_settings(database.settings)
    return receive.record_ses(database, state, delivery, ring=RING, keys=keys, now=now)


def rows(database: Database, address: str, since: datetime) -> dict[str, Any]:
    """The contact's bounce and suppression as comparable facts: an ESP's times (the
    samples': 2016) as they are, ours as before or after `since`."""

    def when(at: datetime) -> Any:
        return at if at.year < 2020 else ("after" if at >= since else "before")

    with database.transaction(write=False) as session:
        contact = session.exec(select(Contact).where(Contact.address == address)).one()
        found = session.get(Bounce, contact.id)
        suppression = session.get(Suppression, contact.id)
    return {
        "bounce": None
        if found is None
        else (
            found.bounced,
            when(found.occurred_at),
            when(found.since),
            found.source,
            found.lifted_at is None,
            found.soft_bounces,
        ),
        "suppression": None
        if suppression is None
        else (
            suppression.suppressed,
            when(suppression.occurred_at),
            when(suppression.since),
            suppression.source,
            suppression.by_recipient,
        ),
    }
