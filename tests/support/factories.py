"""Small typed helpers that build state through the HTTP API, or on a session through the write
model (`make_contact`, `make_change`, `make_subscription`), and read it back from the database."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx2
from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlmodel import Session, SQLModel, col, select

from prefcenter.apikeys.models import ApiKey
from prefcenter.apikeys.service import hash_secret, revoke_api_key
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.models import AuditEvent, AuditHead
from prefcenter.audit.reading import read_events
from prefcenter.audit.schemas import AuditEventOut
from prefcenter.consent.contact_creation import lock_new_contact
from prefcenter.consent.ledger.changes import ChangeRecord
from prefcenter.consent.ledger.orm import AppliedChange, apply_change
from prefcenter.consent.models import Subscription, Suppression
from prefcenter.consent.rules import ActorKind, RequestedChange, Status
from prefcenter.contacts.addresses import parse_address
from prefcenter.contacts.models import Contact
from prefcenter.db import Database, settings_of_session, utcnow
from prefcenter.idempotency import IdempotencyRecord
from prefcenter.problems import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_PREFIX
from prefcenter.topics.models import Topic
from prefcenter.topics.service import find_topic

Json = dict[str, Any]
Headers = dict[str, str]

# Tables whose row counts tell whether a request wrote anything.
WRITTEN_TABLES: tuple[type[SQLModel], ...] = (
    Contact,
    Topic,
    Subscription,
    Suppression,
    AuditEvent,
    IdempotencyRecord,
)


def make_topic(
    client: TestClient, headers: Headers, key: str = "newsletter", **overrides: Any
) -> Json:
    """Create (or update) a topic through `PUT /v1/topics/{key}`; a marketing opt-in topic
    unless overridden."""
    body: Json = {"name": key.replace("-", " ").title(), "kind": "marketing", "consent": "opt_in"}
    body.update(overrides)
    response = client.put(f"/v1/topics/{key}", headers=headers, json=body)
    assert response.status_code in (200, 201), response.text
    topic: Json = response.json()
    return topic


def consent_body(email: str, status: str, **fields: Any) -> Json:
    """A `POST /v1/consents` body; `occurred_at` may be a datetime."""
    body: Json = {"email": email, "status": status}
    for name, value in fields.items():
        body[name] = value.isoformat() if isinstance(value, datetime) else value
    return body


def record_change(
    client: TestClient,
    headers: Headers,
    email: str,
    status: str,
    *,
    expect: int = 200,
    **fields: Any,
) -> Json:
    """Send one consent change and check its status code; returns the answer's JSON."""
    response = client.post(
        "/v1/consents", headers=headers, json=consent_body(email, status, **fields)
    )
    assert response.status_code == expect, response.text
    answer: Json = response.json()
    return answer


def lookup(client: TestClient, headers: Headers, *emails: str) -> list[Json]:
    response = client.post("/v1/contacts/lookup", headers=headers, json={"emails": list(emails)})
    assert response.status_code == 200, response.text
    contacts: list[Json] = response.json()["contacts"]
    return contacts


def subscription_status(contact: Json, topic: str) -> str | None:
    """The status of `topic` in a lookup entry, or None when the contact has no row for it."""
    for subscription in contact["subscriptions"]:
        if subscription["topic"] == topic:
            status: str = subscription["status"]
            return status
    return None


def assert_problem(response: httpx2.Response, status: int, slug: str | None = None) -> Json:
    """An RFC 9457 problem with this status (and type slug, if given); returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM_MEDIA_TYPE
    body: Json = response.json()
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert isinstance(body["type"], str)
    assert body["type"].startswith(PROBLEM_TYPE_PREFIX)
    if slug is not None:
        assert body["type"] == PROBLEM_TYPE_PREFIX + slug
    return body


def error_fields(problem: Json) -> list[str]:
    """The field names a 422 problem names."""
    return [str(error["field"]) for error in problem.get("errors", [])]


def audit_events(database: Database) -> list[AuditEventOut]:
    """Every audit event, in `seq` order, with its evidence and context."""
    with database.transaction(write=False) as session:
        return read_events(session)


def audit_head_seq(database: Database) -> int:
    with database.transaction(write=False) as session:
        head = session.exec(select(AuditHead)).one()
        return head.seq


def count_rows(database: Database, table: type[SQLModel]) -> int:
    with database.transaction(write=False) as session:
        return session.exec(select(func.count()).select_from(table)).one()


def row_counts(database: Database) -> dict[str, int]:
    """Row counts of every table a request could write, to show that one wrote nothing."""
    counts = {table.__name__: count_rows(database, table) for table in WRITTEN_TABLES}
    counts["audit_head_seq"] = audit_head_seq(database)
    return counts


def subscription_row(database: Database, email: str, topic: str) -> Subscription | None:
    with database.transaction(write=False) as session:
        return session.exec(
            select(Subscription)
            .join(Contact, col(Contact.id) == col(Subscription.contact_id))
            .join(Topic, col(Topic.id) == col(Subscription.topic_id))
            .where(Contact.address == email, Topic.key == topic)
        ).first()


def revoke_key(database: Database, headers: Headers) -> None:
    """Revoke the API key behind these Authorization headers."""
    secret = headers["Authorization"].removeprefix("Bearer ")
    with database.transaction(write=True) as session:
        key = session.exec(select(ApiKey).where(ApiKey.secret_hash == hash_secret(secret))).one()
        assert key.id is not None
        revoke_api_key(session, key_id=key.id)


def issue_links(client: TestClient, headers: Headers, email: str, **fields: Any) -> Json:
    """`POST /v1/links` for one address (`topic`, `campaign_id` as keywords); the link set."""
    response = client.post("/v1/links", headers=headers, json={"email": email, **fields})
    assert response.status_code == 200, response.text
    links: Json = response.json()
    return links


def token_of(url: str) -> str:
    """The token of a recipient URL (`…/u/<token>`, `…/p/<token>`, `…/c/<token>`)."""
    path = urlsplit(url).path
    kind, _, token = path.removeprefix("/").partition("/")
    assert kind in {"u", "p", "c"}, url
    return token


# How the session factories' changes name their actor in the trail.
FACTORY_ACTOR = "test:factory"


def make_contact(session: Session, email: str, *, now: datetime | None = None) -> Contact:
    """The contact of `email`, created if new and locked, through the write model
    (consent.contact_creation): an erased address is refused with `address-erased`."""
    keys = AuditKeys.from_settings(settings_of_session(session))
    return lock_new_contact(session, keys, parse_address(email), now=now or utcnow())


def make_change(
    session: Session,
    email: str,
    status: str,
    *,
    topic: str | None = None,
    source: str = "test",
    actor: ActorKind = ActorKind.API_CLIENT,
    reason: str | None = None,
    evidence: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
    now: datetime | None = None,
) -> AppliedChange:
    """One consent change of `email` (of all marketing when `topic` is None), as an API client
    unless `actor` says otherwise, through the ledger's write model (consent.ledger.orm): the
    rules decide it, its audit event and webhook deliveries go into the same transaction. A
    change the rules refuse raises their problem."""
    now = now or utcnow()
    contact = make_contact(session, email, now=now)
    row = find_topic(session, topic) if topic is not None else None
    assert topic is None or row is not None, f"there is no topic {topic!r}"
    return apply_change(
        session,
        contact=contact,
        topic=row,
        requested=RequestedChange(
            status=Status(status),
            occurred_at=occurred_at or now,
            actor=actor,
            source=source,
            reason=reason,
            double_opt_in=row.double_opt_in if row is not None else False,
        ),
        record=ChangeRecord(
            actor=FACTORY_ACTOR, source=source, reason=reason, evidence=evidence or {}
        ),
        now=now,
    )


def make_subscription(
    session: Session, email: str, topic: str, status: str = "subscribed", **fields: Any
) -> AppliedChange:
    """`email`'s subscription of `topic` in `status` (see make_change for `fields`)."""
    return make_change(session, email, status, topic=topic, **fields)
