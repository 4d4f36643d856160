"""Postmark's webhooks: basic authentication; Bounce, SpamComplaint and SubscriptionChange."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from prefcenter.db import Database
from tests.inbound.esp import POSTMARK_PASSWORD, POSTMARK_USER, fixture, postmark_headers
from tests.inbound.helpers import eligibility, subscribe, written
from tests.support.factories import Headers, assert_problem, make_topic


def post(client: TestClient, record: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return client.post(
        "/v1/inbound/postmark",
        content=json.dumps(record).encode(),
        headers=postmark_headers() if headers is None else headers,
    )


@pytest.fixture
def john(client: TestClient, admin_headers: Headers) -> str:
    make_topic(client, admin_headers, "newsletter")
    subscribe(client, admin_headers, "john@example.com", "newsletter")
    return "john@example.com"


def test_a_hard_bounce_bounces(client: TestClient, admin_headers: Headers, john: str) -> None:
    assert post(client, fixture("postmark_bounce.json")).status_code == 200
    assert eligibility(client, admin_headers, "newsletter", john) == ["bounced"]


def test_a_spam_complaint_suppresses(client: TestClient, admin_headers: Headers, john: str) -> None:
    assert post(client, fixture("postmark_spam_complaint.json")).status_code == 200
    assert eligibility(client, admin_headers, "newsletter", john) == ["suppressed"]


def test_a_recipients_subscription_change_unsubscribes(
    client: TestClient, admin_headers: Headers
) -> None:
    make_topic(client, admin_headers, "newsletter")
    subscribe(client, admin_headers, "bounced-address@wildbit.com", "newsletter")
    assert post(client, fixture("postmark_subscription_change.json")).status_code == 200
    reasons = eligibility(client, admin_headers, "newsletter", "bounced-address@wildbit.com")
    assert reasons == ["suppressed"]


@pytest.mark.parametrize("origin", ["Customer", "Admin"])
def test_a_suppression_made_by_the_account_is_not_the_persons(
    client: TestClient, admin_headers: Headers, database: Database, origin: str
) -> None:
    make_topic(client, admin_headers, "newsletter")
    subscribe(client, admin_headers, "bounced-address@wildbit.com", "newsletter")
    record = fixture("postmark_subscription_change.json")
    record["Origin"] = origin
    before = written(database)
    response = post(client, record)
    assert response.status_code == 200
    assert response.json()["ignored"] == 1
    assert written(database) == before


@pytest.mark.parametrize(
    ("user", "password"),
    [
        (POSTMARK_USER, "wrong"),
        ("wrong", POSTMARK_PASSWORD),
        (POSTMARK_USER, POSTMARK_PASSWORD + "x"),
        (POSTMARK_USER, ""),
    ],
)
def test_wrong_credentials_are_refused_and_change_nothing(
    client: TestClient, database: Database, john: str, user: str, password: str
) -> None:
    before = written(database)
    response = post(client, fixture("postmark_bounce.json"), postmark_headers(user, password))
    assert_problem(response, 401, "signature-invalid")
    assert written(database) == before


def test_no_credentials_are_refused(client: TestClient, john: str) -> None:
    response = post(client, fixture("postmark_bounce.json"), {"Content-Type": "application/json"})
    assert_problem(response, 401, "signature-invalid")


def test_the_same_record_twice_changes_nothing_the_second_time(
    client: TestClient, database: Database, john: str
) -> None:
    assert post(client, fixture("postmark_bounce.json")).status_code == 200
    before = written(database)
    again = post(client, fixture("postmark_bounce.json"))
    assert again.json()["duplicates"] == 1
    assert written(database) == before
