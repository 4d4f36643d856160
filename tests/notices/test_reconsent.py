"""Re-consent, on both engines: a topic bound to a notice; a subscription given under a version
that a material version replaced answers `reconsent_required` from that version's
`effective_at` until the person consents again on `/p`. Opt-outs stay opt-outs; unbound topics
and non-material versions change nothing."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from prefcenter.apikeys.schemas import Scope
from prefcenter.db import Database
from tests.notices.helpers import POLICY
from tests.notices.reconsent_helpers import MOMENT, bound_topic, eligibility, moved_clock
from tests.preference_center.test_router import ADA, visit
from tests.support.factories import (
    Headers,
    assert_problem,
    audit_events,
    issue_links,
    lookup,
    make_topic,
    record_change,
    subscription_row,
    token_of,
)
from tests.support.harness import issue_key


@pytest.fixture
def checker_headers(database: Database) -> Headers:
    return issue_key(database, Scope.ELIGIBILITY, Scope.CONSENT_READ, name="sender")


@pytest.fixture
def links_headers(database: Database) -> Headers:
    return issue_key(database, Scope.LINKS, name="mailer")


def save(client: TestClient, token: str, *ticked: str, shown: tuple[str, ...]) -> str:
    data = {"topic": list(ticked), "shown": list(shown), "action": "save"}
    page = visit(client, "POST", f"/p/{token}", data=data)
    assert page.status_code == 200, page.text
    return page.text


class TestBinding:
    def test_a_topic_names_its_notice(self, client: TestClient, admin_headers: Headers) -> None:
        bound_topic(client, admin_headers)
        topic = client.get("/v1/topics/newsletter", headers=admin_headers).json()
        assert topic["notice"] == POLICY

    def test_an_unknown_notice_is_refused(
        self, client: TestClient, admin_headers: Headers, database: Database
    ) -> None:
        response = client.put(
            "/v1/topics/news",
            headers=admin_headers,
            json={"name": "News", "kind": "marketing", "consent": "opt_in", "notice": "nope"},
        )
        problem = assert_problem(response, 422, "unknown-notice")
        assert problem["errors"] == [{"field": "notice", "detail": "not a notice"}]
        assert client.get("/v1/topics/news", headers=admin_headers).status_code == 404


def test_a_subscription_under_v1_needs_reconsent_at_v2_and_the_person_gives_it_on_p(
    monkeypatch: pytest.MonkeyPatch,
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    checker_headers: Headers,
    links_headers: Headers,
    database: Database,
) -> None:
    clock = moved_clock(monkeypatch)
    policy = bound_topic(client, admin_headers, name="Newsletter")
    record_change(client, writer_headers, ADA, "subscribed", topic="newsletter")
    row = subscription_row(database, ADA, "newsletter")
    assert row is not None
    assert row.notice_version_id is not None
    token = token_of(issue_links(client, links_headers, ADA)["preferences_url"])

    clock.at = policy.v2_at - MOMENT
    assert eligibility(client, checker_headers, "newsletter", ADA) == ["subscribed"]
    clock.at = policy.v2_at
    assert eligibility(client, checker_headers, "newsletter", ADA) == ["reconsent_required"]
    (contact,) = lookup(client, checker_headers, ADA)
    assert contact["subscriptions"][0]["reconsent_required"] is True

    page = visit(client, "GET", f"/p/{token}")
    assert "needs your consent again" in page.text
    assert 'value="newsletter" checked' not in page.text  # not pre-ticked
    assert 'aria-describedby="topic-newsletter-reconsent"' in page.text

    clock.at = policy.v2_at + MOMENT
    saved = save(client, token, "newsletter", shown=("newsletter",))
    assert "needs your consent again" not in saved
    assert 'value="newsletter" checked' in saved
    assert eligibility(client, checker_headers, "newsletter", ADA) == ["subscribed"]
    (contact,) = lookup(client, checker_headers, ADA)
    assert contact["subscriptions"][0]["reconsent_required"] is False
    event = audit_events(database)[-1]
    assert (event.outcome, event.from_status, event.to_status) == (
        "applied",
        "subscribed",
        "subscribed",
    )
    assert event.context["given_under"] == f"{POLICY}@v2"


def test_leaving_the_box_empty_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    checker_headers: Headers,
    links_headers: Headers,
    database: Database,
) -> None:
    clock = moved_clock(monkeypatch)
    policy = bound_topic(client, admin_headers)
    record_change(client, writer_headers, ADA, "subscribed", topic="newsletter")
    token = token_of(issue_links(client, links_headers, ADA)["preferences_url"])
    clock.at = policy.v2_at
    events = len(audit_events(database))
    save(client, token, shown=("newsletter",))
    assert len(audit_events(database)) == events
    assert eligibility(client, checker_headers, "newsletter", ADA) == ["reconsent_required"]


def test_an_unbound_topic_is_unaffected(
    monkeypatch: pytest.MonkeyPatch,
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    checker_headers: Headers,
) -> None:
    clock = moved_clock(monkeypatch)
    policy = bound_topic(client, admin_headers)
    make_topic(client, admin_headers, "offers")
    record_change(client, writer_headers, ADA, "subscribed", topic="offers")
    clock.at = policy.v2_at
    assert eligibility(client, checker_headers, "offers", ADA) == ["subscribed"]


def test_a_non_material_version_asks_nothing(
    monkeypatch: pytest.MonkeyPatch,
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    checker_headers: Headers,
) -> None:
    clock = moved_clock(monkeypatch)
    policy = bound_topic(client, admin_headers, material=False)
    record_change(client, writer_headers, ADA, "subscribed", topic="newsletter")
    clock.at = policy.v2_at
    assert eligibility(client, checker_headers, "newsletter", ADA) == ["subscribed"]


def test_a_later_opt_out_under_v1_stays_unsubscribed(
    monkeypatch: pytest.MonkeyPatch,
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    checker_headers: Headers,
    links_headers: Headers,
) -> None:
    clock = moved_clock(monkeypatch)
    policy = bound_topic(client, admin_headers)
    record_change(client, writer_headers, ADA, "subscribed", topic="newsletter")
    record_change(client, writer_headers, ADA, "unsubscribed", topic="newsletter")
    clock.at = policy.v2_at
    assert eligibility(client, checker_headers, "newsletter", ADA) == ["unsubscribed"]
    token = token_of(issue_links(client, links_headers, ADA)["preferences_url"])
    assert "needs your consent again" not in visit(client, "GET", f"/p/{token}").text


def test_an_api_client_repeating_subscribed_gives_no_consent_unless_it_names_the_version(
    monkeypatch: pytest.MonkeyPatch,
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    checker_headers: Headers,
) -> None:
    """A sync that repeats "subscribed" is no new consent to the changed notice; a client
    naming the version the person agreed to (its sign-up form showed it) is."""
    clock = moved_clock(monkeypatch)
    policy = bound_topic(client, admin_headers)
    record_change(client, writer_headers, ADA, "subscribed", topic="newsletter")
    clock.at = policy.v2_at + MOMENT
    repeated = record_change(client, writer_headers, ADA, "subscribed", topic="newsletter")
    assert repeated["changed"] is False
    assert eligibility(client, checker_headers, "newsletter", ADA) == ["reconsent_required"]
    named = record_change(
        client, writer_headers, ADA, "subscribed", topic="newsletter", notice=f"{POLICY}@v2"
    )
    assert named["changed"] is True
    assert eligibility(client, checker_headers, "newsletter", ADA) == ["subscribed"]


def test_consent_naming_the_coming_version_stands_when_it_takes_effect(
    monkeypatch: pytest.MonkeyPatch,
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    checker_headers: Headers,
) -> None:
    clock = moved_clock(monkeypatch)
    policy = bound_topic(client, admin_headers)
    record_change(
        client, writer_headers, ADA, "subscribed", topic="newsletter", notice=f"{POLICY}@v2"
    )
    clock.at = policy.v2_at
    assert eligibility(client, checker_headers, "newsletter", ADA) == ["subscribed"]
