"""Every read path answers re-consent as the rule does, on both engines: the JSON answer (one
address and many), the stream, the audience export (SQLite's keyset chunks, PostgreSQL's
ranges) and the lookup, over a population in every state a bound topic's contact can be in,
written through the single and the batch write paths."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from prefcenter.apikeys.schemas import Scope
from prefcenter.bounces.rules import BounceKind, SoftBouncePolicy
from prefcenter.bounces.schemas import BouncedContact, BounceReport
from prefcenter.bounces.service import record_bounces
from prefcenter.consent.rules import Status
from prefcenter.contacts.models import Contact
from prefcenter.db import Database, utcnow
from prefcenter.eligibility.rules import TopicModel, decide_eligibility
from prefcenter.topics.schemas import ConsentModel, TopicKind
from tests.notices.helpers import POLICY
from tests.notices.reconsent_helpers import MOMENT, bound_topic, eligibility, moved_clock
from tests.support.factories import Headers, lookup, make_topic, record_change
from tests.support.harness import issue_key

# address → (suppressed, subscription, bounced, re-consent asked) once v2 is in force; an
# erased address is answered apart.
STATES: dict[str, tuple[bool, Status | None, bool, bool]] = {
    "stale@example.com": (False, Status.SUBSCRIBED, False, True),
    "batch-stale@example.com": (False, Status.SUBSCRIBED, False, True),
    "named-v2@example.com": (False, Status.SUBSCRIBED, False, False),
    "later@example.com": (False, Status.SUBSCRIBED, False, False),
    "opted-out@example.com": (False, Status.UNSUBSCRIBED, False, False),
    "all-off@example.com": (True, Status.SUBSCRIBED, False, True),
    "bounced@example.com": (False, Status.SUBSCRIBED, True, True),
    "nobody@example.com": (False, None, False, False),
}
ERASED = "erased@example.com"


@pytest.fixture
def checker_headers(database: Database) -> Headers:
    return issue_key(database, Scope.ELIGIBILITY, Scope.CONSENT_READ, name="sender")


def _bounce(database: Database, address: str) -> None:
    with database.transaction(write=True) as session:
        contact = session.exec(select(Contact).where(Contact.address == address)).one()
        assert contact.id is not None
        record_bounces(
            session,
            [
                BounceReport(
                    contact=BouncedContact(contact.id, contact.public_id, address),
                    kind=BounceKind.HARD,
                    occurred_at=utcnow(),
                    actor="esp:ses",
                    source="ses",
                    evidence={"esp": "ses", "esp_event_id": f"b-{address}"},
                )
            ],
            policy=SoftBouncePolicy(limit=3, window=timedelta(days=7)),
            now=utcnow(),
        )


def _slow_answer(model: TopicModel, address: str) -> str:
    if address == ERASED:
        return decide_eligibility(model, erased=True, suppressed=False, subscription=None).reason
    suppressed, status, bounced, reconsent = STATES[address]
    return decide_eligibility(
        model,
        erased=False,
        suppressed=suppressed,
        subscription=status,
        bounced=bounced,
        reconsent=reconsent,
    ).reason.value


@pytest.mark.parametrize("consent", list(ConsentModel))
def test_every_path_answers_as_the_rule(
    monkeypatch: pytest.MonkeyPatch,
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    checker_headers: Headers,
    database: Database,
    consent: ConsentModel,
) -> None:
    clock = moved_clock(monkeypatch)
    policy = bound_topic(client, admin_headers, consent=consent.value)
    for address in ("stale@example.com", "all-off@example.com", "bounced@example.com", ERASED):
        record_change(client, writer_headers, address, "subscribed", topic="newsletter")
    batch = client.post(
        "/v1/consents/batch",
        headers=writer_headers,
        json={
            "changes": [
                {"email": "batch-stale@example.com", "topic": "newsletter", "status": "subscribed"}
            ]
        },
    )
    assert batch.status_code == 200, batch.text
    record_change(
        client,
        writer_headers,
        "named-v2@example.com",
        "subscribed",
        topic="newsletter",
        notice=f"{POLICY}@v2",
    )
    record_change(client, writer_headers, "opted-out@example.com", "subscribed", topic="newsletter")
    record_change(
        client, writer_headers, "opted-out@example.com", "unsubscribed", topic="newsletter"
    )
    record_change(client, writer_headers, "all-off@example.com", "unsubscribed")
    make_topic(client, admin_headers, "offers")
    record_change(client, writer_headers, "nobody@example.com", "subscribed", topic="offers")
    _bounce(database, "bounced@example.com")
    (erased,) = lookup(client, checker_headers, ERASED)
    assert client.delete(f"/v1/contacts/{erased['contact_id']}", headers=admin_headers).is_success
    clock.at = policy.v2_at + MOMENT
    record_change(client, writer_headers, "later@example.com", "subscribed", topic="newsletter")

    model = TopicModel(kind=TopicKind.MARKETING, consent=consent)
    addresses = [*STATES, ERASED, "unknown@example.com"]
    STATES["unknown@example.com"] = (False, None, False, False)
    try:
        expected = [_slow_answer(model, a) for a in addresses]
    finally:
        del STATES["unknown@example.com"]
    assert "reconsent_required" in expected

    assert eligibility(client, checker_headers, "newsletter", *addresses) == expected
    one_by_one = [eligibility(client, checker_headers, "newsletter", a)[0] for a in addresses]
    assert one_by_one == expected

    streamed = client.post(
        "/v1/eligibility/stream",
        params={"topic": "newsletter"},
        headers={**checker_headers, "Content-Type": "text/plain"},
        content="\n".join(addresses).encode(),
    )
    assert streamed.status_code == 200, streamed.text
    rows = list(csv.reader(io.StringIO(streamed.text, newline="")))[1:]
    assert [row[2] for row in rows] == expected

    audience = client.get("/v1/topics/newsletter/audience", headers=checker_headers)
    assert audience.status_code == 200, audience.text
    exported = {row[0] for row in list(csv.reader(io.StringIO(audience.text, newline="")))[1:]}
    allowed = {a for a, reason in zip(addresses, expected, strict=True) if reason in _ALLOWED}
    # The export lists known contacts only.
    assert exported == allowed - {"unknown@example.com"}

    for contact in lookup(client, checker_headers, *addresses):
        asked = [
            s["reconsent_required"] for s in contact["subscriptions"] if s["topic"] == "newsletter"
        ]
        address = contact["email"]
        if address in STATES and STATES[address][1] is Status.SUBSCRIBED:
            assert asked == [STATES[address][3]], address
        else:
            assert not any(asked), address


_ALLOWED = {"subscribed", "opt_out_default"}
