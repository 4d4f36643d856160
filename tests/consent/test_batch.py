"""`POST /v1/consents/batch`: each change under the same rules and guard as one by one, with
its own answer or problem in request order, the valid ones in one transaction, the audit
events chained, the whole batch under one `Idempotency-Key`."""

from __future__ import annotations

import gc
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from prefcenter.apikeys.schemas import Scope
from prefcenter.audit.keys import AuditKeys
from prefcenter.consent import batch
from prefcenter.consent.ledger.replay import verify_ledger
from prefcenter.db import Database
from prefcenter.idempotency import JsonAnswer
from tests.support.factories import (
    Headers,
    Json,
    assert_problem,
    audit_events,
    consent_body,
    lookup,
    make_topic,
    record_change,
    row_counts,
    subscription_status,
)
from tests.support.harness import issue_key

ADA = "ada@example.com"
BOB = "bob@example.com"


def hours_ago(hours: float) -> datetime:
    return datetime.now(UTC) - timedelta(hours=hours)


def post_batch(
    client: TestClient,
    headers: Headers,
    changes: list[Json],
    *,
    expect: int = 200,
    idempotency_key: str | None = None,
) -> Any:
    extra = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    response = client.post(
        "/v1/consents/batch", headers={**headers, **extra}, json={"changes": changes}
    )
    assert response.status_code == expect, response.text
    return response.json()


def states(contact: Json) -> list[tuple[str, str]]:
    return [(s["topic"], s["status"]) for s in contact["subscriptions"]]


def problem_slug(result: Json) -> str:
    slug: str = result["problem"]["type"].rsplit(":", 1)[-1]
    return slug


@pytest.fixture
def erased_address(client: TestClient, admin_headers: Headers, newsletter: str) -> str:
    answer = record_change(client, admin_headers, "eve@example.com", "subscribed", topic=newsletter)
    response = client.delete(f"/v1/contacts/{answer['contact_id']}", headers=admin_headers)
    assert response.status_code == 200, response.text
    return "Eve@Example.com"


class TestBatchOutcomes:
    def test_each_change_gets_its_own_outcome_in_request_order(
        self,
        client: TestClient,
        writer_headers: Headers,
        database: Database,
        newsletter: str,
        erased_address: str,
    ) -> None:
        record_change(
            client, writer_headers, BOB, "unsubscribed", topic=newsletter, source="one_click"
        )
        events_before = len(audit_events(database))

        results = post_batch(
            client,
            writer_headers,
            [
                consent_body(ADA, "subscribed", topic=newsletter),
                consent_body("not an address", "subscribed", topic=newsletter),
                consent_body(ADA, "subscribed", topic="no-such-topic"),
                consent_body(erased_address, "subscribed", topic=newsletter),
                consent_body(BOB, "subscribed", topic=newsletter, source="crm-sync"),
                consent_body("cy@example.com", "unsubscribed"),
            ],
        )["results"]

        assert len(results) == 6
        assert results[0]["status"] == "subscribed"
        assert results[0]["changed"] is True
        assert results[0]["email"] == ADA
        assert problem_slug(results[1]) == "validation"
        assert results[1]["problem"]["status"] == 422
        assert results[1]["problem"]["errors"][0]["field"] == "changes[1].email"
        assert problem_slug(results[2]) == "unknown-topic"
        assert results[2]["problem"]["errors"][0]["field"] == "changes[2].topic"
        assert problem_slug(results[3]) == "address-erased"
        assert results[3]["problem"]["status"] == 409
        assert problem_slug(results[4]) == "recipient-opt-out"
        assert results[4]["problem"]["status"] == 409
        assert results[5]["status"] == "unsubscribed"
        assert results[5]["topic"] is None
        # Only the valid changes were written, each with its event.
        events = audit_events(database)[events_before:]
        assert [e.id for e in events] == [results[0]["event_id"], results[5]["event_id"]]
        ada, bob, cy = lookup(client, writer_headers, ADA, BOB, "cy@example.com")
        assert subscription_status(ada, newsletter) == "subscribed"
        assert subscription_status(bob, newsletter) == "unsubscribed"
        assert cy["suppressed"] is True

    def test_an_erased_address_is_not_stored_again(
        self,
        client: TestClient,
        writer_headers: Headers,
        database: Database,
        newsletter: str,
        erased_address: str,
    ) -> None:
        before = row_counts(database)

        (result,) = post_batch(
            client, writer_headers, [consent_body(erased_address.upper(), "unsubscribed")]
        )["results"]

        assert problem_slug(result) == "address-erased"
        assert row_counts(database) == before
        (contact,) = lookup(client, writer_headers, erased_address)
        assert contact["contact_id"] is None
        assert contact["suppressed"] is True

    def test_every_change_has_its_event_and_the_chain_verifies_deep(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        changes = [
            consent_body(f"p{i}@example.com", "subscribed" if i % 3 else "unsubscribed", **topic)
            for i in range(150)
            for topic in ({"topic": newsletter}, {})
        ]

        results = post_batch(client, writer_headers, changes)["results"]

        ids = {e.id for e in audit_events(database)}
        assert all(r["event_id"] in ids for r in results)
        result = verify_ledger(database, AuditKeys.from_settings(database.settings), deep=True)
        assert result.ok, result.detail
        assert result.checked == len(ids)


class TestBatchOrdering:
    def test_a_later_change_sees_the_earlier(
        self, client: TestClient, writer_headers: Headers, newsletter: str
    ) -> None:
        results = post_batch(
            client,
            writer_headers,
            [
                consent_body(ADA, "subscribed", topic=newsletter),
                consent_body(ADA, "unsubscribed", topic=newsletter),
                consent_body(BOB, "unsubscribed", topic=newsletter),
                consent_body(BOB, "subscribed", topic=newsletter),
            ],
        )["results"]

        assert [r["status"] for r in results] == [
            "subscribed",
            "unsubscribed",
            "unsubscribed",
            "subscribed",
        ]
        assert all(r["changed"] for r in results)
        ada, bob = lookup(client, writer_headers, ADA, BOB)
        assert subscription_status(ada, newsletter) == "unsubscribed"
        assert subscription_status(bob, newsletter) == "subscribed"

    def test_an_older_change_in_the_same_batch_is_superseded(
        self, client: TestClient, writer_headers: Headers, newsletter: str
    ) -> None:
        results = post_batch(
            client,
            writer_headers,
            [
                consent_body(ADA, "unsubscribed", topic=newsletter, occurred_at=hours_ago(1)),
                consent_body(ADA, "subscribed", topic=newsletter, occurred_at=hours_ago(2)),
            ],
        )["results"]

        assert results[1]["outcome"] == "superseded"
        (ada,) = lookup(client, writer_headers, ADA)
        assert subscription_status(ada, newsletter) == "unsubscribed"

    def test_a_recipient_opt_out_earlier_in_the_batch_guards_a_later_subscribe(
        self, client: TestClient, writer_headers: Headers, newsletter: str
    ) -> None:
        results = post_batch(
            client,
            writer_headers,
            [
                consent_body(ADA, "subscribed", topic=newsletter),
                consent_body(ADA, "unsubscribed", source="one_click"),
                consent_body(ADA, "subscribed", topic=newsletter, source="crm-sync"),
            ],
        )["results"]

        assert results[1]["status"] == "unsubscribed"
        assert problem_slug(results[2]) == "recipient-opt-out"
        (ada,) = lookup(client, writer_headers, ADA)
        assert ada["suppressed"] is True

    def test_the_batch_and_one_by_one_agree(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        """The same changes, one by one for one set of people and as a batch for another,
        leave the same states and the same outcomes (explicit times: one by one and batch
        then decide on the same instants)."""
        plan: list[tuple[int, str, bool, float, str]] = [
            (0, "subscribed", True, 5, "api"),
            (0, "unsubscribed", True, 4, "api"),
            (0, "subscribed", True, 4.5, "api"),
            (1, "unsubscribed", False, 3, "one_click"),
            (1, "subscribed", True, 2, "crm-sync"),
            (1, "subscribed", False, 1, "crm-sync"),
            (2, "subscribed", True, 3, "api"),
            (2, "subscribed", True, 2, "api"),
            (2, "unsubscribed", False, 1, "api"),
            (2, "subscribed", False, 0.5, "api"),
        ]
        times = [hours_ago(h) for _, _, _, h, _ in plan]

        def body(prefix: str, index: int) -> Json:
            who, status, on_topic, _, source = plan[index]
            topic = {"topic": newsletter} if on_topic else {}
            email = f"{prefix}{who}@example.com"
            return consent_body(email, status, occurred_at=times[index], source=source, **topic)

        one_by_one: list[str] = []
        for index in range(len(plan)):
            response = client.post("/v1/consents", headers=writer_headers, json=body("a", index))
            one_by_one.append(
                response.json()["outcome"]
                if response.status_code == 200
                else problem_slug({"problem": response.json()})
            )
        batch = post_batch(
            client, writer_headers, [body("b", index) for index in range(len(plan))]
        )["results"]

        assert [r.get("outcome") or problem_slug(r) for r in batch] == one_by_one
        for who in range(3):
            (a,) = lookup(client, writer_headers, f"a{who}@example.com")
            (b,) = lookup(client, writer_headers, f"b{who}@example.com")
            assert a["suppressed"] == b["suppressed"]
            assert states(a) == states(b)  # `since` is when each was recorded: not the same


class TestBatchLimits:
    def test_idempotent_replay_returns_the_same_results_and_writes_nothing(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        changes = [
            consent_body(ADA, "subscribed", topic=newsletter),
            consent_body(ADA, "subscribed", topic="no-such-topic"),
        ]
        first = post_batch(client, writer_headers, changes, idempotency_key="sync-1")
        before = row_counts(database)

        response = client.post(
            "/v1/consents/batch",
            headers={**writer_headers, "Idempotency-Key": "sync-1"},
            json={"changes": changes},
        )

        assert response.status_code == 200
        assert response.json() == first
        assert response.headers["Idempotent-Replayed"] == "true"
        assert row_counts(database) == before
        other = client.post(
            "/v1/consents/batch",
            headers={**writer_headers, "Idempotency-Key": "sync-1"},
            json={"changes": changes[:1]},
        )
        assert_problem(other, 422, "idempotency-key-reused")

    def test_over_a_thousand_changes_is_a_413_and_writes_nothing(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        before = row_counts(database)
        changes = [
            consent_body(f"p{i}@example.com", "subscribed", topic=newsletter) for i in range(1001)
        ]

        response = client.post(
            "/v1/consents/batch", headers=writer_headers, json={"changes": changes}
        )

        assert_problem(response, 413, "batch-too-large")
        assert row_counts(database) == before

    def test_a_thousand_changes_are_taken(
        self, client: TestClient, writer_headers: Headers, newsletter: str
    ) -> None:
        changes = [
            consent_body(f"p{i}@example.com", "subscribed", topic=newsletter) for i in range(1000)
        ]

        results = post_batch(client, writer_headers, changes)["results"]

        assert len(results) == 1000
        assert {r["status"] for r in results} == {"subscribed"}

    def test_the_collector_is_paused_while_a_batch_is_recorded(
        self,
        client: TestClient,
        writer_headers: Headers,
        newsletter: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        seen: list[bool] = []
        record_changes = batch.record_changes

        def recording(*args: Any, **kwargs: Any) -> JsonAnswer:
            seen.append(gc.isenabled())
            return record_changes(*args, **kwargs)

        monkeypatch.setattr(batch, "record_changes", recording)
        enabled = gc.isenabled()
        gc.enable()
        try:
            post_batch(client, writer_headers, [consent_body(ADA, "subscribed", topic=newsletter)])
            assert seen == [False]
            assert gc.isenabled()
        finally:
            if not enabled:
                gc.disable()

    def test_an_empty_batch_is_invalid(self, client: TestClient, writer_headers: Headers) -> None:
        response = client.post("/v1/consents/batch", headers=writer_headers, json={"changes": []})
        assert_problem(response, 422, "validation")


class TestBatchAuth:
    def test_needs_a_key_with_consent_write(
        self, client: TestClient, database: Database, newsletter: str
    ) -> None:
        body = {"changes": [consent_body(ADA, "subscribed", topic=newsletter)]}
        before = row_counts(database)

        assert_problem(client.post("/v1/consents/batch", json=body), 401)
        for scope in (Scope.CONSENT_READ, Scope.LINKS, Scope.ELIGIBILITY):
            headers = issue_key(database, scope, name=f"only-{scope.value}")
            assert_problem(client.post("/v1/consents/batch", headers=headers, json=body), 403)
        assert row_counts(database) == before

    def test_an_api_key_cannot_reverse_a_recipient_opt_out_in_a_batch(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        record_change(client, writer_headers, ADA, "unsubscribed", source="one_click")
        before = row_counts(database)

        results = post_batch(
            client,
            writer_headers,
            [
                consent_body(ADA, "subscribed"),
                consent_body(ADA, "subscribed", topic=newsletter),
                consent_body(ADA, "subscribed", reason="asked", source="crm-sync"),
            ],
        )["results"]

        assert [problem_slug(r) for r in results] == ["recipient-opt-out"] * 3
        assert row_counts(database) == before
        (ada,) = lookup(client, writer_headers, ADA)
        assert ada["suppressed"] is True

    def test_double_opt_in_leaves_it_pending_with_a_confirm_link(
        self, client: TestClient, admin_headers: Headers, writer_headers: Headers
    ) -> None:
        make_topic(client, admin_headers, "digest", double_opt_in=True)

        (result,) = post_batch(
            client, writer_headers, [consent_body(ADA, "subscribed", topic="digest")]
        )["results"]

        assert result["status"] == "pending"
        assert "/c/" in result["confirm_url"]
        page = client.get(result["confirm_url"].split("testserver", 1)[-1])
        assert page.status_code == 200
