"""`GET /v1/changes`: consent events in commit order, from an opaque cursor."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from prefcenter.apikeys.schemas import Scope
from prefcenter.audit.changes import CHANGES_CURSOR, START_CURSOR
from prefcenter.audit.schemas import ScopedAuditEventOut
from prefcenter.db import Database
from tests.support.factories import (
    Headers,
    Json,
    assert_problem,
    audit_events,
    error_fields,
    make_topic,
    record_change,
)
from tests.support.harness import issue_key, make_settings
from tests.support.live_server import fresh_database_url, issue_live_key, live_server

CONSENT_KINDS = {"consent_change", "global_consent_change"}


def changes(client: TestClient, headers: Headers, **params: Any) -> Json:
    response = client.get("/v1/changes", headers=headers, params=params)
    assert response.status_code == 200, response.text
    body: Json = response.json()
    return body


@pytest.fixture
def reader_headers(database: Database) -> Headers:
    return issue_key(database, Scope.CONSENT_READ, name="feed")


@pytest.fixture
def mixed_history(
    client: TestClient, admin_headers: Headers, writer_headers: Headers, database: Database
) -> list[int]:
    """Topic changes between consent changes; returns the seqs of the consent events."""
    make_topic(client, admin_headers, "news")
    record_change(client, writer_headers, "ada@example.com", "subscribed", topic="news")
    make_topic(client, admin_headers, "offers", consent="opt_out")
    record_change(client, writer_headers, "ada@example.com", "unsubscribed")
    record_change(client, writer_headers, "bob@example.com", "unsubscribed", topic="offers")
    make_topic(client, admin_headers, "alerts")
    record_change(client, writer_headers, "bob@example.com", "subscribed", topic="news")
    events = audit_events(database)
    assert {e.kind for e in events} == CONSENT_KINDS | {"topic_change"}
    return [e.seq for e in events if e.kind in CONSENT_KINDS]


SECRET_TICKET = "SUP-48151623"
SECRET_AGENT = "Mozilla/5.0 (secret-agent)"
SECRET_IP = "203.0.113.77"


@pytest.fixture
def change_with_evidence(
    client: TestClient, admin_headers: Headers, writer_headers: Headers
) -> Json:
    """One consent change whose evidence and request context hold personal data."""
    make_topic(client, admin_headers, "news")
    return record_change(
        client,
        {**writer_headers, "User-Agent": SECRET_AGENT},
        "ada@example.com",
        "subscribed",
        topic="news",
        evidence={"ticket": SECRET_TICKET, "ip": SECRET_IP},
    )


class TestChanges:
    def test_without_after_starts_at_the_beginning_with_consent_events_only(
        self, client: TestClient, reader_headers: Headers, mixed_history: list[int]
    ) -> None:
        body = changes(client, reader_headers)

        assert [e["seq"] for e in body["events"]] == mixed_history
        assert {e["kind"] for e in body["events"]} == CONSENT_KINDS
        for event in body["events"]:
            assert ScopedAuditEventOut.model_validate(event).model_dump(mode="json") == event
        assert body["next"] == CHANGES_CURSOR.encode(mixed_history[-1])

    def test_pages_follow_next_without_gaps_or_repeats(
        self, client: TestClient, reader_headers: Headers, mixed_history: list[int]
    ) -> None:
        seen: list[int] = []
        cursor: str | None = None
        for _ in range(10):
            params: dict[str, Any] = {"limit": 2}
            if cursor is not None:
                params["after"] = cursor
            body = changes(client, reader_headers, **params)
            assert len(body["events"]) <= 2
            seen += [e["seq"] for e in body["events"]]
            if not body["events"]:
                assert body["next"] == cursor
                break
            cursor = body["next"]

        assert seen == mixed_history

    def test_caught_up_answers_no_events_and_the_same_cursor(
        self,
        client: TestClient,
        reader_headers: Headers,
        writer_headers: Headers,
        mixed_history: list[int],
    ) -> None:
        cursor = changes(client, reader_headers)["next"]

        assert changes(client, reader_headers, after=cursor) == {"events": [], "next": cursor}

        record_change(client, writer_headers, "cy@example.com", "subscribed", topic="news")
        later = changes(client, reader_headers, after=cursor)
        assert [e["contact_id"] is not None for e in later["events"]] == [True]
        assert later["next"] != cursor

    def test_empty_trail_answers_the_start_cursor(
        self, client: TestClient, reader_headers: Headers
    ) -> None:
        assert changes(client, reader_headers) == {"events": [], "next": START_CURSOR}
        assert changes(client, reader_headers, after=START_CURSOR)["next"] == START_CURSOR

    @pytest.mark.parametrize(
        "cursor",
        [
            "",
            "x",
            "12",
            "seq:1",
            CHANGES_CURSOR.encode(1) + "=",
            CHANGES_CURSOR.encode(1) + "!",
            "c2VxOi0x",
        ],
    )
    def test_malformed_cursor_is_a_422_naming_after(
        self, client: TestClient, reader_headers: Headers, cursor: str
    ) -> None:
        response = client.get("/v1/changes", headers=reader_headers, params={"after": cursor})

        problem = assert_problem(response, 422)
        assert any(field.endswith("after") for field in error_fields(problem)), problem

    @pytest.mark.parametrize("limit", [0, 1001, -1])
    def test_limit_out_of_range_is_a_422(
        self, client: TestClient, reader_headers: Headers, limit: int
    ) -> None:
        response = client.get("/v1/changes", headers=reader_headers, params={"limit": limit})

        problem = assert_problem(response, 422)
        assert any(field.endswith("limit") for field in error_fields(problem)), problem

    def test_limit_of_1000_is_allowed(self, client: TestClient, reader_headers: Headers) -> None:
        assert changes(client, reader_headers, limit=1000)["events"] == []

    def test_a_consent_read_key_gets_no_evidence_or_request_context(
        self, client: TestClient, reader_headers: Headers, change_with_evidence: Json
    ) -> None:
        (event,) = changes(client, reader_headers)["events"]

        assert event["id"] == change_with_evidence["event_id"]
        assert "evidence" not in event
        assert "context" not in event
        assert set(event) == set(ScopedAuditEventOut.model_fields) - {"evidence", "context"}
        for secret in (SECRET_TICKET, SECRET_AGENT, SECRET_IP):
            assert secret not in str(event)

    @pytest.mark.parametrize(
        "scopes", [(Scope.CONSENT_READ, Scope.AUDIT_READ), (Scope.ADMIN,)], ids=["audit", "admin"]
    )
    def test_a_key_that_may_read_the_audit_trail_gets_evidence_and_context(
        self,
        client: TestClient,
        database: Database,
        change_with_evidence: Json,
        scopes: tuple[Scope, ...],
    ) -> None:
        headers = issue_key(database, *scopes, name="auditor")

        (event,) = changes(client, headers)["events"]

        assert event["evidence"]["ticket"] == SECRET_TICKET
        assert event["context"]["user_agent"] == SECRET_AGENT
        # The same event as the audit trail shows it.
        trail = client.get("/v1/audit", headers=headers, params={"email": "ada@example.com"})
        (audited,) = trail.json()["events"]
        assert event == audited

    def test_needs_the_consent_read_scope(self, client: TestClient, database: Database) -> None:
        headers = issue_key(database, Scope.ELIGIBILITY, name="eligibility-only")

        assert_problem(client.get("/v1/changes", headers=headers), 403)
        assert_problem(client.get("/v1/changes"), 401)


# --- a reader polling while writers commit ---------------------------------------------------

WORKERS = 4
WRITER_THREADS = 6
CHANGES_PER_WRITER = 25
POLL_LIMIT = 7


@dataclass
class Poll:
    seqs: list[int]
    ids: list[str]
    # Events read before the writers had all finished.
    read_while_writing: int = 0
    error: BaseException | None = None


def poll_until_stopped(base_url: str, headers: Headers, stop: threading.Event, out: Poll) -> None:
    """Poll from the last `next` in a tight loop; once told to stop, poll until caught up."""
    cursor: str | None = None
    try:
        with httpx.Client(base_url=base_url, headers=headers, timeout=30.0) as client:
            while True:
                stopping = stop.is_set()
                if not stopping:
                    out.read_while_writing = len(out.seqs)
                params: dict[str, Any] = {"limit": POLL_LIMIT}
                if cursor is not None:
                    params["after"] = cursor
                answer = client.get("/v1/changes", params=params)
                assert answer.status_code == 200, answer.text
                body = answer.json()
                out.seqs += [e["seq"] for e in body["events"]]
                out.ids += [e["id"] for e in body["events"]]
                cursor = body["next"]
                if stopping and not body["events"]:
                    return
    except BaseException as exc:
        out.error = exc


def write_changes(base_url: str, headers: Headers, writer: int, errors: list[str]) -> None:
    with httpx.Client(base_url=base_url, headers=headers, timeout=60.0) as client:
        for i in range(CHANGES_PER_WRITER):
            body: Json = {
                # Some contacts shared between writers, so their transactions contend.
                "email": f"w{writer % 3}-{i % 5}@example.com",
                "status": "subscribed" if (i + writer) % 2 == 0 else "unsubscribed",
            }
            if i % 4 != 0:
                body["topic"] = "news" if i % 2 else "offers"
            answer = client.post("/v1/consents", json=body)
            if answer.status_code != 200:
                errors.append(f"{answer.status_code}: {answer.text}")
            if i % 10 == 0:
                # A topic change in between: its event is in the trail, not in the feed.
                client.put(
                    f"/v1/topics/t-{writer}-{i}",
                    json={"name": "t", "kind": "marketing", "consent": "opt_in"},
                )


@pytest.fixture(params=("sqlite", "postgresql"))
def live_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return fresh_database_url(request, request.param, tmp_path)


@pytest.mark.slow
def test_a_reader_polling_while_writers_commit_sees_every_event_once_in_order(
    live_url: str, tmp_path: Path
) -> None:
    headers = issue_live_key(live_url, Scope.ADMIN, name="changes")
    with live_server(live_url, log_dir=tmp_path, workers=WORKERS) as server:
        with httpx.Client(base_url=server.base_url, headers=headers) as client:
            for key, consent in (("news", "opt_in"), ("offers", "opt_out")):
                body = {"name": key, "kind": "marketing", "consent": consent}
                assert client.put(f"/v1/topics/{key}", json=body).status_code == 201
        stop = threading.Event()
        polled = Poll(seqs=[], ids=[])
        errors: list[str] = []
        poller = threading.Thread(
            target=poll_until_stopped, args=(server.base_url, headers, stop, polled)
        )
        writers = [
            threading.Thread(target=write_changes, args=(server.base_url, headers, w, errors))
            for w in range(WRITER_THREADS)
        ]
        poller.start()
        started = time.monotonic()
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join(timeout=120)
        stop.set()
        poller.join(timeout=60)
        elapsed = time.monotonic() - started

    assert not poller.is_alive()
    assert polled.error is None, polled.error
    assert errors == []
    database = Database(make_settings(live_url))
    try:
        committed = [e for e in audit_events(database) if e.kind in CONSENT_KINDS]
    finally:
        database.dispose()
    assert len(committed) == WRITER_THREADS * CHANGES_PER_WRITER
    # Every committed consent event exactly once, in increasing seq: nothing skipped.
    assert polled.seqs == [e.seq for e in committed]
    assert polled.ids == [e.id for e in committed]
    # The reader really read while the writers wrote, not only once they were done.
    assert polled.read_while_writing > 0, (polled, elapsed)
