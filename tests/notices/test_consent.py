"""`POST /v1/consents` naming the notice version the person saw, on both engines: checked
(published; in force at `occurred_at` or about to be), recorded with the change, named by the
audit trail and the receipt."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from prefcenter.apikeys.schemas import Scope
from prefcenter.db import Database
from tests.notices.helpers import publish, put_notice
from tests.support.factories import (
    Headers,
    assert_problem,
    audit_events,
    consent_body,
    error_fields,
    make_topic,
    record_change,
    row_counts,
)
from tests.support.harness import issue_key

PAST = datetime(2026, 1, 1, tzinfo=UTC)


def policy_with_two_versions(client: TestClient, admin: Headers) -> datetime:
    """v1 in force since PAST, v2 taking effect in 31 days; returns v2's effective_at."""
    make_topic(client, admin, "newsletter")
    put_notice(client, admin)
    publish(client, admin, "v1", effective_at=PAST, reason="The first version.", material=False)
    v2 = publish(client, admin, "v2", effective_in=timedelta(days=31))
    return datetime.fromisoformat(v2["effective_at"])


def test_the_version_is_recorded_and_named_by_trail_and_receipt(
    client: TestClient, admin_headers: Headers, writer_headers: Headers, database: Database
) -> None:
    policy_with_two_versions(client, admin_headers)
    answer = record_change(
        client,
        writer_headers,
        "ada@example.com",
        "subscribed",
        topic="newsletter",
        notice="privacy@v1",
    )
    (event,) = [e for e in audit_events(database) if e.id == answer["event_id"]]
    assert event.context["notice"] == "privacy@v1"
    auditor = issue_key(database, Scope.AUDIT_READ, name="auditor")
    trail = client.get(
        "/v1/audit", headers=auditor, params={"contact_id": answer["contact_id"]}
    ).json()
    assert trail["events"][0]["context"]["notice"] == "privacy@v1"
    receipt = client.get(
        f"/v1/contacts/{answer['contact_id']}/receipt", headers=writer_headers
    ).json()["receipt"]
    (purpose,) = receipt["services"][0]["purposes"]
    assert purpose["noticeVersion"] == "privacy@v1"


def test_a_coming_version_may_be_named_before_it_takes_effect(
    client: TestClient, admin_headers: Headers, writer_headers: Headers
) -> None:
    policy_with_two_versions(client, admin_headers)
    record_change(
        client,
        writer_headers,
        "ada@example.com",
        "subscribed",
        topic="newsletter",
        notice="privacy@v2",
    )


def test_a_replaced_version_is_refused_after_its_successor_took_effect(
    client: TestClient, admin_headers: Headers, writer_headers: Headers
) -> None:
    make_topic(client, admin_headers, "newsletter")
    put_notice(client, admin_headers, "terms", kind="terms")
    publish(client, admin_headers, "t1", key="terms", effective_at=PAST, reason="First.")
    t2_effective = PAST + timedelta(days=10)
    publish(client, admin_headers, "t2", key="terms", effective_at=t2_effective, reason="Second.")
    # Given while t1 was in force.
    record_change(
        client,
        writer_headers,
        "ada@example.com",
        "subscribed",
        topic="newsletter",
        notice="terms@t1",
        occurred_at=t2_effective - timedelta(seconds=1),
    )
    for occurred_at in (t2_effective, datetime.now(UTC)):
        answer = client.post(
            "/v1/consents",
            headers=writer_headers,
            json=consent_body(
                "bob@example.com",
                "subscribed",
                topic="newsletter",
                notice="terms@t1",
                occurred_at=occurred_at,
            ),
        )
        problem = assert_problem(answer, 422, "notice-version-superseded")
        assert "notice" in error_fields(problem)


def test_an_unknown_version_is_a_422_and_nothing_is_written(
    client: TestClient, admin_headers: Headers, writer_headers: Headers, database: Database
) -> None:
    policy_with_two_versions(client, admin_headers)
    before = row_counts(database)
    for notice in ("privacy@v9", "nope@v1"):
        answer = client.post(
            "/v1/consents",
            headers=writer_headers,
            json=consent_body("ada@example.com", "subscribed", topic="newsletter", notice=notice),
        )
        assert "notice" in error_fields(assert_problem(answer, 422, "unknown-notice-version"))
    for malformed in ("privacy", "privacy@", "@v1", "privacy@v1@x"):
        answer = client.post(
            "/v1/consents",
            headers=writer_headers,
            json=consent_body(
                "ada@example.com", "subscribed", topic="newsletter", notice=malformed
            ),
        )
        assert_problem(answer, 422)
    assert row_counts(database) == before


def test_a_batch_checks_each_changes_notice_in_its_slot(
    client: TestClient, admin_headers: Headers, writer_headers: Headers, database: Database
) -> None:
    policy_with_two_versions(client, admin_headers)
    answer = client.post(
        "/v1/consents/batch",
        headers=writer_headers,
        json={
            "changes": [
                consent_body(
                    "ada@example.com", "subscribed", topic="newsletter", notice="privacy@v1"
                ),
                consent_body(
                    "bob@example.com", "subscribed", topic="newsletter", notice="privacy@v9"
                ),
                consent_body("eve@example.com", "subscribed", topic="newsletter"),
            ]
        },
    )
    assert answer.status_code == 200, answer.text
    ada, bob, eve = answer.json()["results"]
    assert bob["problem"]["type"].endswith("unknown-notice-version")
    events = {e.id: e for e in audit_events(database)}
    assert events[ada["event_id"]].context["notice"] == "privacy@v1"
    assert "notice" not in events[eve["event_id"]].context
