"""The lane of `POST /v1/contacts/lookup` (consent.lookup_lane): every request sent through the
lane and through the route alone gets the same answer (status, headers that matter, body byte
for byte), whoever asks and whatever is asked; the lane answers only what the route answers
200, reads no rows for a caller the route refuses, and steps aside where the route reads
elsewhere (a read replica) or retries (a dead connection).

PostgreSQL has the lane; on SQLite every request takes the route, which the same comparisons
check there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response
from sqlalchemy import text
from sqlmodel import select

from prefcenter import lane_io
from prefcenter.apikeys.schemas import Scope
from prefcenter.apikeys.service import find_caller, hash_secret, revoke_api_key
from prefcenter.app import create_app
from prefcenter.audit.keys import AuditKeys
from prefcenter.bounces.models import Bounce
from prefcenter.consent import lookup_lane
from prefcenter.consent.lookup import (
    CALLER_AND_LOOKUP_PG,
    lookup_parameters,
    read_caller_and_rows,
)
from prefcenter.contacts.addresses import parse_address
from prefcenter.contacts.models import Contact
from prefcenter.db import Database
from prefcenter.driver import DriverCursor
from prefcenter.storage_errors import ConnectionLost
from tests.notices.reconsent_helpers import MOMENT, bound_topic, moved_clock
from tests.support.factories import Headers, make_topic, record_change
from tests.support.harness import issue_key, make_settings

PATH = "/v1/contacts/lookup"
ADA = "ada@example.com"
EVERYONE = [
    "ADA@example.com",
    "bob@example.com",
    "cy@example.com",
    "eve@example.com",
    "nobody@example.com",
    ADA,
]


@dataclass(frozen=True)
class Both:
    """One request's answers: through the lane (as served), and through the route alone."""

    lane: Response
    route: Response
    lane_answered: bool


def _lane_of(client: TestClient) -> lookup_lane.LookupLane:
    app: Any = client.app
    if app.middleware_stack is None:
        app.middleware_stack = app.build_middleware_stack()
    layer = app.middleware_stack
    while not isinstance(layer, lookup_lane.LookupLane):
        layer = layer.app
    return layer


@pytest.fixture
def ask(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`ask(headers, **request)`: the same request through the lane and the route alone."""
    sent: list[int] = []
    real = lane_io.send_json

    async def counted(*args: Any, **kwargs: Any) -> None:
        sent.append(1)
        await real(*args, **kwargs)

    monkeypatch.setattr(lookup_lane, "send_json", counted)
    lane = _lane_of(client)

    def both(headers: Headers | None = None, **request: Any) -> Both:
        before = len(sent)
        through_lane = client.post(PATH, headers=headers, **request)
        answered = len(sent) > before
        applies, lane.applies = lane.applies, False
        try:
            through_route = client.post(PATH, headers=headers, **request)
        finally:
            lane.applies = applies
        assert len(sent) == before + answered
        return Both(through_lane, through_route, answered)

    return both


def _same(both: Both) -> None:
    lane, route = both.lane, both.route
    assert lane.status_code == route.status_code, (lane.text, route.text)
    for header in ("content-type", "www-authenticate", "content-length"):
        assert lane.headers.get(header) == route.headers.get(header), header
    if route.headers["content-type"].startswith("application/problem+json"):
        assert lane.json() == route.json()
    else:
        assert lane.content == route.content


@pytest.fixture
def people(
    client: TestClient, writer_headers: Headers, admin_headers: Headers, database: Database
) -> None:
    """Ada subscribed to two topics (one pending), Bob opted out of all marketing, Cy
    hard-bounced, Eve erased; nobody@ is unknown."""
    make_topic(client, admin_headers, "newsletter")
    make_topic(client, admin_headers, "alerts", double_opt_in=True)
    record_change(client, writer_headers, ADA, "subscribed", topic="newsletter")
    record_change(client, writer_headers, ADA, "subscribed", topic="alerts")
    record_change(client, writer_headers, "bob@example.com", "unsubscribed")
    record_change(client, writer_headers, "cy@example.com", "subscribed", topic="newsletter")
    eve = record_change(client, writer_headers, "eve@example.com", "subscribed")
    erased = client.delete(f"/v1/contacts/{eve['contact_id']}", headers=admin_headers)
    assert erased.status_code == 200
    with database.transaction(write=True) as session:
        cy = session.exec(select(Contact).where(Contact.address == "cy@example.com")).one()
        assert cy.id is not None
        now = datetime.now(UTC)
        session.add(
            Bounce(
                contact_id=cy.id,
                bounced=True,
                occurred_at=now,
                since=now,
                source="admin",
                event_id="test",
            )
        )


def _lane_expected(database: Database) -> bool:
    return not database.settings.is_sqlite


def test_every_address_alone_and_together_gets_the_routes_answer(
    ask: Any, reader_headers: Headers, database: Database, people: None
) -> None:
    for asked in [*([a] for a in EVERYONE), EVERYONE, ["Ada@Example.COM", "ada@example.com"]]:
        both = ask(reader_headers, json={"emails": asked})
        assert both.route.status_code == 200
        _same(both)
        assert both.lane_answered is _lane_expected(database)
    answers = both.lane.json()["contacts"]
    assert [a["email"] for a in answers] == ["Ada@Example.COM", "ada@example.com"]


def test_an_admin_key_and_a_key_with_more_scopes_are_answered(
    ask: Any, database: Database, people: None
) -> None:
    for headers in (
        issue_key(database, Scope.ADMIN, name="admin"),
        issue_key(database, Scope.CONSENT_WRITE, Scope.CONSENT_READ, Scope.LINKS, name="crm"),
    ):
        both = ask(headers, json={"emails": EVERYONE})
        assert both.route.status_code == 200
        _same(both)
        assert both.lane_answered is _lane_expected(database)


def test_refused_callers_get_the_routes_refusal_from_the_route(
    ask: Any, writer_headers: Headers, reader_headers: Headers, database: Database, people: None
) -> None:
    revoked = issue_key(database, Scope.CONSENT_READ, name="revoked")
    with database.transaction(write=False) as session:
        caller = find_caller(session, revoked["Authorization"].removeprefix("Bearer "))
    assert caller is not None
    with database.transaction(write=True) as session:
        revoke_api_key(session, key_id=caller.key_id)
    secret = reader_headers["Authorization"].removeprefix("Bearer ")
    body = {"emails": [ADA]}
    cases: list[tuple[Headers | None, int]] = [
        (None, 401),
        ({"Authorization": "Bearer pck_" + "x" * 43}, 401),
        ({"Authorization": "Bearer nokey"}, 401),
        ({"Authorization": f"Basic {secret}"}, 401),
        ({"Authorization": f"Bearer {secret}x"}, 401),
        ({"Authorization": "Bearer pck_" + "x" * 300}, 401),
        (revoked, 401),
        (issue_key(database, Scope.CONSENT_WRITE, name="writer"), 403),
        (issue_key(database, Scope.ELIGIBILITY, Scope.LINKS, name="mailer"), 403),
    ]
    for headers, status in cases:
        both = ask(headers, json=body)
        assert both.route.status_code == status, headers
        _same(both)
        assert not both.lane_answered
    # The scheme is case-insensitive, as the route's bearer check has it.
    lower = ask({"Authorization": f"bearer {secret}"}, json=body)
    _same(lower)
    assert lower.route.status_code == 200


def test_bodies_the_route_refuses_get_its_problem(
    ask: Any, reader_headers: Headers, people: None
) -> None:
    json_headers = {**reader_headers, "Content-Type": "application/json"}
    cases: list[dict[str, Any]] = [
        {"json": {"emails": ["not an address"]}},
        {"json": {"emails": [ADA, "ada@"]}},
        {"json": {"emails": []}},
        {"json": {"emails": [ADA] * 1001}},
        {"json": {"emails": [ADA], "more": 1}},
        {"json": {"email": ADA}},
        {"json": [ADA]},
        {"content": b'{"emails": ["ada@example.com"'},
        {"content": b'{"emails": ["\\ud800@example.com"]}'},
        {"content": b"\xff\xfe"},
    ]
    for request in cases:
        both = ask(json_headers, **request)
        assert both.route.status_code in {400, 422}, request
        _same(both)
        assert not both.lane_answered, request


def test_a_body_the_lane_does_not_read_itself_goes_to_the_route(
    ask: Any, reader_headers: Headers, database: Database, people: None
) -> None:
    body = b'{"emails": ["ada@example.com"]}'
    for content_type in ("text/plain", "application/json; charset=utf-8", "APPLICATION/JSON"):
        both = ask({**reader_headers, "Content-Type": content_type}, content=body)
        _same(both)
        # Parameters and case of the media type are the lane's too.
        assert both.lane_answered is (_lane_expected(database) and content_type != "text/plain"), (
            content_type
        )


def test_reconsent_is_answered_as_the_route_answers_it(
    ask: Any,
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    reader_headers: Headers,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = moved_clock(monkeypatch)
    policy = bound_topic(client, admin_headers, name="Newsletter")
    make_topic(client, admin_headers, "offers")
    record_change(client, writer_headers, ADA, "subscribed", topic="newsletter")
    record_change(client, writer_headers, ADA, "subscribed", topic="offers")
    for at, required in ((policy.v2_at - MOMENT, False), (policy.v2_at, True)):
        clock.at = at
        both = ask(reader_headers, json={"emails": [ADA, "nobody@example.com"]})
        _same(both)
        assert both.lane_answered is _lane_expected(database)
        subscriptions = both.lane.json()["contacts"][0]["subscriptions"]
        assert [(s["topic"], s["reconsent_required"]) for s in subscriptions] == [
            ("newsletter", required),
            ("offers", False),
        ]


def _rows_read(
    database: Database, headers: Headers | None, secret: str | None = None
) -> tuple[Any, Any]:
    if secret is None:
        assert headers is not None
        secret = headers["Authorization"].removeprefix("Bearer ")
    keys = AuditKeys.from_settings(database.settings)

    def read(cursor: DriverCursor) -> tuple[Any, Any]:
        return read_caller_and_rows(
            cursor, [parse_address(ADA)], secret_hash=hash_secret(secret), keys=keys
        )

    return database.on_connection(read)


def test_no_rows_are_read_for_a_caller_the_route_refuses(
    reader_headers: Headers, database: Database, people: None
) -> None:
    if database.settings.is_sqlite:
        pytest.skip("the lane's statement is PostgreSQL's")
    writer_headers = issue_key(database, Scope.CONSENT_WRITE, name="writer")
    assert _rows_read(database, None, secret="pck_unknown") == (None, None)
    writer, rows = _rows_read(database, writer_headers)
    assert writer is not None
    assert writer.scopes == frozenset({Scope.CONSENT_WRITE})
    assert rows is None
    reader, rows = _rows_read(database, reader_headers)
    assert reader is not None
    assert rows is not None
    assert [(row[0], row[5]) for row in rows] == [(ADA, "alerts"), (ADA, "newsletter")]


def test_a_refused_callers_statement_reads_no_table_but_the_keys(
    reader_headers: Headers, database: Database, people: None
) -> None:
    if database.settings.is_sqlite:
        pytest.skip("the lane's statement is PostgreSQL's")
    keys = AuditKeys.from_settings(database.settings)
    writer = issue_key(database, Scope.CONSENT_WRITE, name="writer")

    def tables_read(headers: Headers | None) -> set[str]:
        secret = "pck_unknown" if headers is None else headers["Authorization"][7:]
        one, asked = lookup_parameters([parse_address(ADA)], keys)
        parameters = {"secret_hash": hash_secret(secret), **asked}

        def explain(cursor: DriverCursor) -> Any:
            statement = CALLER_AND_LOOKUP_PG[one]
            cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters)
            return cursor.fetchone()

        (plan,) = database.on_connection(explain)
        read: set[str] = set()
        nodes = [plan[0]["Plan"]]
        while nodes:
            node = nodes.pop()
            if "Relation Name" in node and node["Actual Loops"] > 0:
                read.add(node["Relation Name"])
            nodes.extend(node.get("Plans", []))
        return read

    assert tables_read(None) == {"api_key"}
    assert tables_read(writer) == {"api_key"}
    assert {"api_key", "contact", "subscription"} <= tables_read(reader_headers)


def test_a_lookup_of_one_address_is_planned_once_per_connection(
    reader_headers: Headers, database: Database, people: None
) -> None:
    """psycopg prepares the statement; PostgreSQL then keeps its generic plan (planning it
    each time would cost ten times its execution): seen in pg_prepared_statements."""
    if database.settings.is_sqlite:
        pytest.skip("the lane's statement is PostgreSQL's")
    keys = AuditKeys.from_settings(database.settings)
    secret_hash = hash_secret(reader_headers["Authorization"].removeprefix("Bearer "))
    with database.transaction(write=True) as session:
        # Enough contacts for the planner to price each probe as a real one.
        session.execute(
            text(
                "INSERT INTO contact (public_id, address, address_display, created_at) "
                "SELECT 'p' || g, 'c' || g || '@example.com', 'c' || g || '@example.com', now() "
                "FROM generate_series(1, 5000) AS g"
            )
        )
    database.on_connection(lambda cursor: cursor.execute("ANALYZE contact"))

    def lookups(cursor: DriverCursor) -> Any:
        for i in range(20):
            asked = [parse_address(f"c{i}@example.com")]
            read_caller_and_rows(cursor, asked, secret_hash=secret_hash, keys=keys)
        cursor.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE %(lane)s",
            {"lane": "%LEFT JOIN LATERAL%"},
        )
        return cursor.fetchall()

    ((generic, custom),) = database.on_connection(lookups)
    assert generic > custom


def test_a_dead_connection_leaves_the_request_to_the_route(
    ask: Any,
    reader_headers: Headers,
    database: Database,
    people: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def lost(*_: Any, **__: Any) -> Any:
        raise ConnectionLost("lost")

    monkeypatch.setattr(lookup_lane, "read_caller_and_rows", lost)
    both = ask(reader_headers, json={"emails": EVERYONE})
    assert both.route.status_code == 200
    _same(both)
    assert not both.lane_answered


def test_with_a_read_replica_the_route_answers(database_url: str) -> None:
    """The route reads through the replica (db.Database.reads); the lane steps aside. (The
    primary named as its own replica: not a standby, so read on the primary, as the route
    does then.)"""
    if database_url.startswith("sqlite"):
        pytest.skip("a SQLite file has no replica")
    settings = make_settings(database_url, read_database_url=database_url)
    with TestClient(create_app(settings)) as client:
        lane = _lane_of(client)
        assert not lane.applies
        headers = issue_key(lane.database, Scope.CONSENT_READ, name="reader")
        response = client.post(PATH, headers=headers, json={"emails": [ADA]})
        assert response.status_code == 200, response.text
        assert response.json()["contacts"][0]["contact_id"] is None
