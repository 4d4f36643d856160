"""The fast lane of `/u/{token}` (preference_center.unsubscribe_lane) and its opt-out statement
(consent.ledger.lane): what it answers itself and what it hands to the app, that its
opt-out writes exactly what the ORM path writes, and that a change racing it is never
overwritten.

The behaviour recipients see (pages, headers, one-click in both encodings, bad tokens) is in
test_router.py, which now runs through the lane; this module tests the lane's own decisions.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from starlette.types import Receive, Send
from starlette.types import Scope as AsgiScope

from prefcenter.apikeys.schemas import Scope
from prefcenter.audit.context import RequestContext
from prefcenter.audit.keys import AuditKeys
from prefcenter.consent.ledger.lane import read_optout_state, write_optout
from prefcenter.consent.ledger.replay import verify_ledger
from prefcenter.consent.rules import Status
from prefcenter.db import Database, utcnow
from prefcenter.preference_center import service, unsubscribe_lane
from prefcenter.preference_center.unsubscribe_lane import MAX_FORM_BYTES, UnsubscribeLane
from prefcenter.settings import Settings, parse_signing_keys
from prefcenter.tokens import TokenPurpose, VerifiedToken, sign_token, verify_token
from tests.preference_center.test_router import ONE_CLICK, one_click
from tests.support.factories import (
    Headers,
    audit_events,
    audit_head_seq,
    issue_links,
    make_topic,
    record_change,
    token_of,
)
from tests.support.harness import TEST_SIGNING_KEYS, issue_key
from tests.test_tokens import legacy_manage_token

RING = parse_signing_keys(TEST_SIGNING_KEYS)
ADA = "ada@example.com"
FORM_TYPE = "application/x-www-form-urlencoded"


# --- the lane in front of a recorder: what it answers itself, what it hands on -------------


@dataclass
class Recorder:
    """An ASGI app standing where the FastAPI app stands: records what reaches it and echoes
    the body it was handed."""

    calls: list[tuple[str, str, bytes]] = field(default_factory=list)

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        body = b""
        if scope["type"] == "http":
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body", False):
                    break
        self.calls.append((scope["method"], scope["path"], body))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"app:" + body})


@pytest.fixture
def newsletter_token(
    client: TestClient, admin_headers: Headers, writer_headers: Headers, database: Database
) -> str:
    make_topic(client, admin_headers, "newsletter", name="Newsletter")
    record_change(client, writer_headers, ADA, "subscribed", topic="newsletter")
    links_headers = issue_key(database, Scope.LINKS, name="mailer")
    return token_of(issue_links(client, links_headers, ADA, topic="newsletter")["unsubscribe_url"])


@pytest.fixture
def lane(client: TestClient, settings: Settings) -> tuple[TestClient, Recorder]:
    state = client.app.state  # type: ignore[attr-defined]
    recorder = Recorder()
    lane = UnsubscribeLane(
        recorder,
        settings=settings,
        database=state.database,
        signing_keys=state.signing_keys,
        trusted_proxies=state.trusted_proxies,
        audit_keys=state.audit_keys,
        policy_versions=state.policy_versions,
    )
    return TestClient(lane), recorder  # no lifespan: the app's runs in `client`


def test_the_lane_serves_a_valid_page_itself_and_head_without_a_body(
    lane: tuple[TestClient, Recorder], newsletter_token: str
) -> None:
    lane_client, recorder = lane
    page = lane_client.get(f"/u/{newsletter_token}?lang=de")
    assert page.status_code == 200
    assert "a•••@example.com" in page.text
    assert "Newsletter" in page.text
    assert page.headers["content-language"] == "de"
    assert f'action="/u/{newsletter_token}?lang=de"' in page.text
    head = lane_client.head(f"/u/{newsletter_token}?lang=de")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(page.content))
    assert recorder.calls == []


def test_a_mailed_version_1_link_is_still_served_by_the_lane(
    lane: tuple[TestClient, Recorder], newsletter_token: str, database: Database
) -> None:
    """Links mailed before purposes were split carry one MANAGE token on /u: they keep
    unsubscribing (as the law expects of a link already sent)."""
    lane_client, recorder = lane
    claims = _verified(newsletter_token).claims
    legacy = legacy_manage_token(claims, RING)
    assert lane_client.get(f"/u/{legacy}").status_code == 200
    assert recorder.calls == []
    if database.settings.is_sqlite:
        return  # SQLite's opt-out is the app's; test_router covers it
    answer = lane_client.post(
        f"/u/{legacy}", content=ONE_CLICK, headers={"Content-Type": FORM_TYPE}
    )
    assert answer.status_code == 200
    assert recorder.calls == []
    with database.transaction(write=False) as session:
        status = session.execute(text("SELECT status FROM subscription")).scalar_one()
    assert status == "unsubscribed"


def test_a_preference_token_is_not_the_lanes_and_the_app_refuses_it(
    lane: tuple[TestClient, Recorder], newsletter_token: str, client: TestClient
) -> None:
    claims = _verified(newsletter_token).claims
    manage = sign_token(RING, TokenPurpose.MANAGE, claims)
    lane_client, recorder = lane
    for method in ("GET", "POST"):
        response = lane_client.request(
            method, f"/u/{manage}", content=ONE_CLICK, headers={"Content-Type": FORM_TYPE}
        )
        assert response.status_code == 299  # handed to the app
        assert (
            client.request(
                method, f"/u/{manage}", content=ONE_CLICK, headers={"Content-Type": FORM_TYPE}
            ).status_code
            == 400
        )
    assert [c[0] for c in recorder.calls] == ["GET", "POST"]


@pytest.mark.parametrize(
    ("method", "path_of", "content", "headers"),
    [
        ("GET", lambda t: f"/u/{t[:-1]}", None, {}),  # a bad token: the app's 400 page
        ("GET", lambda t: f"/p/{t}", None, {}),  # not the lane's path
        ("OPTIONS", lambda t: f"/u/{t}", None, {}),
        ("PUT", lambda t: f"/u/{t}", b"x", {}),
        (
            "POST",
            lambda t: f"/u/{t}",
            b"--b\r\nContent-Disposition: form-data; "
            b'name="List-Unsubscribe"\r\n\r\nOne-Click\r\n--b--\r\n',
            {"Content-Type": "multipart/form-data; boundary=b"},
        ),
        (
            "POST",
            lambda t: f"/u/{t}",
            b"List-Unsubscribe=One-Click&pad=" + b"x" * MAX_FORM_BYTES,
            {"Content-Type": "application/x-www-form-urlencoded"},
        ),
        (
            "POST",
            lambda t: f"/u/{t}",
            b"List-Unsubscribe=One-Click",
            {"Content-Type": "text/plain"},
        ),
    ],
    ids=["bad-token", "other-path", "options", "put", "multipart", "over-long", "other-type"],
)
def test_the_lane_hands_everything_else_to_the_app_untouched(
    lane: tuple[TestClient, Recorder],
    newsletter_token: str,
    database: Database,
    method: str,
    path_of: Any,
    content: bytes | None,
    headers: dict[str, str],
) -> None:
    lane_client, recorder = lane
    before = audit_head_seq(database)
    path = path_of(newsletter_token)
    response = lane_client.request(method, path, content=content, headers=headers)
    assert response.status_code == 299
    assert recorder.calls == [(method, path, content or b"")]
    assert response.content == b"app:" + (content or b"")
    assert audit_head_seq(database) == before


def test_a_one_click_post_is_the_lanes_on_postgresql_and_the_apps_on_sqlite(
    lane: tuple[TestClient, Recorder], newsletter_token: str, database: Database
) -> None:
    lane_client, recorder = lane
    before = audit_head_seq(database)
    response = lane_client.post(
        f"/u/{newsletter_token}",
        content=ONE_CLICK,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    if database.settings.is_sqlite:
        assert response.status_code == 299
        assert recorder.calls == [("POST", f"/u/{newsletter_token}", ONE_CLICK)]
        assert audit_head_seq(database) == before
        return
    assert response.status_code == 200, response.text
    assert "a•••@example.com" in response.text
    assert recorder.calls == []
    event = audit_events(database)[-1]
    assert event.seq == before + 1
    assert (event.source, event.topic, event.to_status) == (
        "one_click",
        "newsletter",
        "unsubscribed",
    )


def test_an_erased_contact_goes_to_the_app(
    lane: tuple[TestClient, Recorder],
    newsletter_token: str,
    client: TestClient,
    admin_headers: Headers,
) -> None:
    lane_client, recorder = lane
    contact_id = verify_token(RING, TokenPurpose.UNSUBSCRIBE, newsletter_token, now=utcnow())
    erased = client.delete(f"/v1/contacts/{contact_id.claims.contact_id}", headers=admin_headers)
    assert erased.status_code in (200, 204), erased.text
    for method in ("GET", "POST"):
        response = lane_client.request(
            method,
            f"/u/{newsletter_token}",
            content=ONE_CLICK if method == "POST" else None,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 299
    assert [c[0] for c in recorder.calls] == ["GET", "POST"]
    assert recorder.calls[1][2] == ONE_CLICK  # the body the lane read is handed on


# --- the guarded opt-out (PostgreSQL) ------------------------------------------------------


def _postgres_only(database: Database) -> None:
    if database.settings.is_sqlite:
        pytest.skip("SQLite's opt-out takes the app's path; the guarded statement is PostgreSQL's")


def _verified(token: str) -> VerifiedToken:
    return verify_token(RING, TokenPurpose.UNSUBSCRIBE, token, now=utcnow())


def _opt_out_fast(
    database: Database, verified: VerifiedToken, channel: service.Channel, now: datetime
) -> bool:
    record = service.recipient_record(verified, channel, RequestContext("192.0.2.1", "ua", None))
    requested = service.recipient_change(Status.UNSUBSCRIBED, channel, now)
    keys = AuditKeys.from_settings(database.settings)

    def work(cursor: Any) -> bool:
        state = read_optout_state(
            cursor, public_id=verified.claims.contact_id, topic_key=verified.claims.topic
        )
        assert state is not None
        written = write_optout(
            cursor, state, requested=requested, record=record, keys=keys, now=now
        )
        return written is not None

    return database.on_connection(work)


def _opt_out_orm(
    database: Database, verified: VerifiedToken, channel: service.Channel, now: datetime
) -> None:
    with database.transaction(write=True) as session:
        service.unsubscribe(
            session,
            verified,
            channel=channel,
            request=RequestContext("192.0.2.1", "ua", None),
            now=now,
        )


def _state_rows(database: Database, address: str) -> dict[str, Any]:
    """The contact's subscription and suppression rows, as comparable facts."""
    with database.transaction(write=False) as session:
        connection = session.connection()
        subscriptions = connection.execute(
            text(
                "SELECT t.key, s.status, s.occurred_at, s.since, s.source, s.by_recipient, "
                "s.event_id FROM subscription s JOIN contact c ON c.id = s.contact_id "
                "JOIN topic t ON t.id = s.topic_id WHERE c.address = :a ORDER BY t.key"
            ),
            {"a": address},
        ).all()
        suppression = connection.execute(
            text(
                "SELECT p.suppressed, p.occurred_at, p.since, p.source, p.by_recipient "
                "FROM suppression p JOIN contact c ON c.id = p.contact_id WHERE c.address = :a"
            ),
            {"a": address},
        ).first()
    return {"subscriptions": [tuple(r) for r in subscriptions], "suppression": suppression}


def test_the_guarded_opt_out_holds_the_campaign_id_only_as_its_digest(
    lane: tuple[TestClient, Recorder],
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    database: Database,
) -> None:
    """The one-click's event is the format 2 event the ORM path writes: the link's campaign
    id in `audit_free_text`, its keyed digest in the chain."""
    _postgres_only(database)
    lane_client, recorder = lane
    make_topic(client, admin_headers, "newsletter", name="Newsletter")
    record_change(client, writer_headers, ADA, "subscribed", topic="newsletter")
    campaign = "callback +44 20 7946 0958"
    links = issue_links(
        client,
        issue_key(database, Scope.LINKS, name="mailer"),
        ADA,
        topic="newsletter",
        campaign_id=campaign,
    )

    response = lane_client.post(
        f"/u/{token_of(links['unsubscribe_url'])}",
        content=ONE_CLICK,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert response.status_code == 200, response.text
    assert recorder.calls == []
    event = audit_events(database)[-1]
    assert (event.source, event.campaign_id) == ("one_click", campaign)
    with database.transaction(write=False) as session:
        canonical, stored = (
            session.connection()
            .execute(
                text(
                    "SELECT e.canonical, f.campaign_id FROM audit_event e "
                    "JOIN audit_free_text f ON f.seq = e.seq WHERE e.seq = :seq"
                ),
                {"seq": event.seq},
            )
            .one()
        )
    keys = AuditKeys.from_settings(database.settings)
    assert stored == campaign
    assert b"7946" not in bytes(canonical)
    digest = keys.free_text_digest("campaign_id", campaign)
    assert digest is not None
    assert f'"campaign_id_digest":"{digest}"'.encode() in bytes(canonical)
    assert verify_ledger(database, keys, deep=True).ok


# Each starting state, set up through the API for two contacts; one then opts out through the
# guarded statement, the other through the ORM path, at the same instant.
STARTS: dict[str, list[tuple[str, str | None]]] = {
    "topic-no-row": [],
    "topic-subscribed": [("subscribed", "newsletter")],
    "topic-unsubscribed-by-api": [("subscribed", "newsletter"), ("unsubscribed", "newsletter")],
    "topic-pending": [("subscribed", "digest")],
    "all-no-row": [],
    "all-suppressed": [("unsubscribed", None)],
    "all-lifted": [("unsubscribed", None), ("subscribed", None)],
}


@pytest.mark.parametrize("start", list(STARTS))
def test_the_guarded_opt_out_writes_what_the_orm_path_writes(
    start: str,
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    database: Database,
) -> None:
    _postgres_only(database)
    make_topic(client, admin_headers, "newsletter", name="Newsletter")
    make_topic(client, admin_headers, "digest", name="Digest", double_opt_in=True)
    links_headers = issue_key(database, Scope.LINKS, name="mailer")
    topic = "digest" if start == "topic-pending" else "newsletter"
    fast, slow = "fast@example.com", "slow@example.com"
    verified = {}
    for address in (fast, slow):
        for status, change_topic in STARTS[start]:
            fields: dict[str, Any] = {"topic": change_topic} if change_topic else {}
            record_change(client, writer_headers, address, status, **fields)
        link_fields: dict[str, Any] = {"topic": topic} if start.startswith("topic") else {}
        links = issue_links(client, links_headers, address, **link_fields)
        verified[address] = _verified(token_of(links["unsubscribe_url"]))
    now = utcnow()
    head = audit_head_seq(database)
    assert _opt_out_fast(database, verified[fast], service.Channel.ONE_CLICK, now)
    _opt_out_orm(database, verified[slow], service.Channel.ONE_CLICK, now)
    assert audit_head_seq(database) == head + 2
    fast_event, slow_event = audit_events(database)[-2:]

    def comparable(event: Any) -> dict[str, Any]:
        facts: dict[str, Any] = event.model_dump(exclude={"id", "seq", "contact_id", "recorded_at"})
        # Each contact's own token: issued apart, maybe a second apart.
        facts["evidence"].pop("token_issued_at")
        return facts

    assert comparable(fast_event) == comparable(slow_event)
    assert fast_event.occurred_at == now

    def rows(address: str, event_id: str) -> dict[str, Any]:
        state = _state_rows(database, address)
        # Compare what each row says, with its own event id and times made relative.
        state["subscriptions"] = [
            (key, status, occurred == now, since == now, source, by, own == event_id)
            for key, status, occurred, since, source, by, own in state["subscriptions"]
        ]
        if state["suppression"] is not None:
            suppressed, occurred, since, source, by = state["suppression"]
            state["suppression"] = (suppressed, occurred == now, since == now, source, by)
        return state

    assert rows(fast, fast_event.id) == rows(slow, slow_event.id)
    result = verify_ledger(database, AuditKeys.from_settings(database.settings), deep=True)
    assert result.ok, result


def test_a_change_between_the_read_and_the_write_is_never_overwritten(
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    database: Database,
    newsletter_token: str,
) -> None:
    _postgres_only(database)
    verified = _verified(newsletter_token)
    keys = AuditKeys.from_settings(database.settings)
    now = utcnow()
    record = service.recipient_record(
        verified, service.Channel.ONE_CLICK, RequestContext(None, None, None)
    )
    requested = service.recipient_change(Status.UNSUBSCRIBED, service.Channel.ONE_CLICK, now)
    stale = database.on_connection(
        lambda cursor: read_optout_state(
            cursor, public_id=verified.claims.contact_id, topic_key="newsletter"
        )
    )
    assert stale is not None
    # Meanwhile an API client records a newer change (any change moves the row on).
    record_change(client, writer_headers, ADA, "unsubscribed", topic="newsletter")
    head = audit_head_seq(database)
    rows = _state_rows(database, ADA)
    written = database.on_connection(
        lambda cursor: write_optout(
            cursor, stale, requested=requested, record=record, keys=keys, now=now
        )
    )
    assert written is None
    assert audit_head_seq(database) == head
    assert _state_rows(database, ADA) == rows
    # The address corrected since the read: nothing written either.
    fresh = database.on_connection(
        lambda cursor: read_optout_state(
            cursor, public_id=verified.claims.contact_id, topic_key="newsletter"
        )
    )
    assert fresh is not None
    corrected = client.patch(
        f"/v1/contacts/{verified.claims.contact_id}",
        headers=admin_headers,
        json={"address": "ada.l@example.com", "reason": "typo, ticket 7"},
    )
    assert corrected.status_code == 200, corrected.text
    assert (
        database.on_connection(
            lambda cursor: write_optout(
                cursor, fresh, requested=requested, record=record, keys=keys, now=utcnow()
            )
        )
        is None
    )
    assert audit_head_seq(database) == head + 1  # the correction's event only


def test_when_the_guarded_write_gives_way_the_app_does_the_opt_out_with_the_same_body(
    client: TestClient,
    database: Database,
    newsletter_token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _postgres_only(database)
    gave_way: list[str] = []

    def moved_on(cursor: Any, state: Any, **_: Any) -> None:
        gave_way.append(state.public_id)

    monkeypatch.setattr(unsubscribe_lane, "write_optout", moved_on)
    head = audit_head_seq(database)
    response = client.post(
        f"/u/{newsletter_token}",
        content=b"via=page",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert gave_way == [_verified(newsletter_token).claims.contact_id]
    events = audit_events(database)
    assert len(events) == head + 1
    # `via=page` reached the app's form: the event says the page's button, not one-click.
    assert (events[-1].source, events[-1].to_status) == ("unsubscribe_page", "unsubscribed")
    again = one_click(client, f"/u/{newsletter_token}")
    assert again.status_code == 200


def test_one_click_storm_on_one_link_applies_once_and_records_every_click(
    client: TestClient, database: Database, newsletter_token: str
) -> None:
    """Clicks that race on one contact: one applies, every other is recorded as unchanged (or
    as superseded, when a click stamped earlier commits later), whether the guarded write took
    it or gave way to the app's locking path; and the chain and state agree."""
    clicks = 12
    head = audit_head_seq(database)
    with ThreadPoolExecutor(max_workers=clicks) as pool:
        answers = list(
            pool.map(lambda _: one_click(client, f"/u/{newsletter_token}"), range(clicks))
        )
    assert [a.status_code for a in answers] == [200] * clicks
    events = audit_events(database)[head:]
    assert len(events) == clicks
    outcomes = [e.outcome for e in events]
    assert outcomes.count("applied") == 1
    assert set(outcomes) <= {"applied", "unchanged", "superseded"}
    assert {(e.source, e.to_status) for e in events} == {("one_click", "unsubscribed")}
    assert _state_rows(database, ADA)["subscriptions"][0][:2] == ("newsletter", "unsubscribed")
    result = verify_ledger(database, AuditKeys.from_settings(database.settings), deep=True)
    assert result.ok, result
