"""Links only ever reduce consent: what the holders of a link, or of a `links`-only API key,
can do to a person who opted out. The two attacks of the security review, as tests:

(a) a `links` key mints the links of a person who opted out through the support desk and
    posts the preference page with the topic ticked;
(b) the `/u/` of a one-clicked List-Unsubscribe URL is changed to `/p/` and posted ticked.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from prefcenter.apikeys.schemas import Scope
from prefcenter.db import Database
from tests.consent.test_erased_everywhere import mutating_routes
from tests.preference_center.test_router import ONE_CLICK
from tests.support.factories import (
    Headers,
    Json,
    issue_links,
    lookup,
    make_topic,
    record_change,
    row_counts,
    token_of,
)
from tests.support.harness import issue_key

EVE = "eve@example.com"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def links_only(database: Database) -> Headers:
    return issue_key(database, Scope.LINKS, name="mailer")


@pytest.fixture
def topics(client: TestClient, admin_headers: Headers) -> None:
    make_topic(client, admin_headers, "newsletter", name="Newsletter")
    make_topic(client, admin_headers, "offers", name="Offers")


def support_opt_out(client: TestClient, admin_headers: Headers, topic: str | None) -> None:
    """Eve phoned the support desk and asked to be taken off (the topic, or everything)."""
    fields: dict[str, Any] = {"source": "phone", "reason": "call 2026-12-01: asked to be removed"}
    if topic is not None:
        fields["topic"] = topic
    record_change(client, admin_headers, EVE, "unsubscribed", **fields)


def state(client: TestClient, database: Database, admin_headers: Headers) -> tuple[Json, ...]:
    return (*lookup(client, admin_headers, EVE), row_counts(database))


def post_preferences(client: TestClient, url: str, *topics: str) -> int:
    data = {"shown": ["newsletter", "offers"], "topic": list(topics), "action": "save"}
    return client.post(url, data=data, headers=FORM).status_code


@pytest.mark.usefixtures("topics")
@pytest.mark.parametrize("scope", ["topic", "all"])
def test_a_links_key_cannot_lift_a_support_opt_out_by_any_route(
    client: TestClient,
    database: Database,
    admin_headers: Headers,
    links_only: Headers,
    scope: str,
) -> None:
    record_change(client, admin_headers, EVE, "subscribed", topic="newsletter", source="signup")
    support_opt_out(client, admin_headers, "newsletter" if scope == "topic" else None)
    # An API client's plain `subscribed` is refused (the guard): the baseline of the review.
    writer = issue_key(database, Scope.CONSENT_WRITE, name="crm")
    refused = client.post(
        "/v1/consents",
        json={"email": EVE, "topic": "newsletter", "status": "subscribed"},
        headers=writer,
    )
    assert refused.status_code == 409
    links = issue_links(client, links_only, EVE, topic="newsletter")
    all_links = issue_links(client, links_only, EVE)
    before = state(client, database, admin_headers)

    # The preference page, ticked, with the token of each link the key can mint.
    for url in (links["preferences_url"], all_links["preferences_url"]):
        assert post_preferences(client, url, "newsletter") == 200
    # The other pages refuse those tokens.
    for token in (token_of(links["preferences_url"]), token_of(links["unsubscribe_url"])):
        assert client.post(f"/c/{token}").status_code == 400
    # Every mutating route of the API, with a body that asks to subscribe.
    subscribe = {"email": EVE, "topic": "newsletter", "status": "subscribed", "source": "x"}
    for method, path in mutating_routes(client):
        if path == "/p" or path.startswith(("/u/", "/p/", "/c/", "/v1/links")):
            continue
        concrete = path.replace("{key}", "newsletter").replace("{contact_id}", "x")
        answer = client.request(method, concrete, json=subscribe, headers=links_only)
        # The ESPs' routes take no key: they answer 404 until configured, 401 for a body
        # without its ESP's signature.
        expected = {401, 403, 404} if path.startswith("/v1/inbound/") else {403}
        assert answer.status_code in expected, (method, path, answer.text)

    after = state(client, database, admin_headers)
    assert after[0] == before[0]  # the contact's state: unchanged
    (eve,) = lookup(client, admin_headers, EVE)
    newsletter = next(s for s in eve["subscriptions"] if s["topic"] == "newsletter")
    if scope == "topic":
        assert newsletter["status"] == "unsubscribed"
    else:
        assert eve["suppressed"] is True


@pytest.mark.usefixtures("topics")
def test_a_one_clicked_unsubscribe_url_turned_into_a_preference_url_changes_nothing(
    client: TestClient, database: Database, admin_headers: Headers, links_only: Headers
) -> None:
    record_change(client, admin_headers, EVE, "subscribed", topic="newsletter", source="signup")
    links = issue_links(client, links_only, EVE, topic="newsletter")
    unsubscribe_url = links["unsubscribe_url"]
    assert client.post(unsubscribe_url, content=ONE_CLICK, headers=FORM).status_code == 200
    before = state(client, database, admin_headers)

    swapped = unsubscribe_url.replace("/u/", "/p/")
    assert client.get(swapped).status_code == 400
    assert post_preferences(client, swapped, "newsletter") == 400

    assert state(client, database, admin_headers) == before


@pytest.mark.usefixtures("topics")
def test_the_persons_own_preference_link_cannot_undo_their_one_click_either(
    client: TestClient, database: Database, admin_headers: Headers, links_only: Headers
) -> None:
    """Even the genuine preference link: whoever holds the mail holds it. Reversing the
    person's own opt-out needs proof of the mailbox (a confirmation mail)."""
    record_change(client, admin_headers, EVE, "subscribed", topic="newsletter", source="signup")
    links = issue_links(client, links_only, EVE, topic="newsletter")
    assert client.post(links["unsubscribe_url"], content=ONE_CLICK, headers=FORM).status_code == (
        200
    )
    before = state(client, database, admin_headers)

    assert post_preferences(client, links["preferences_url"], "newsletter", "offers") == 200

    (eve,) = lookup(client, admin_headers, EVE)
    statuses = {s["topic"]: s["status"] for s in eve["subscriptions"]}
    # `offers` was never refused by Eve: turning it on is her choice and immediate.
    assert statuses == {"newsletter": "unsubscribed", "offers": "subscribed"}
    assert before[0]["subscriptions"] != eve["subscriptions"]
