"""Pooled connections that died (the server restarted, a proxy dropped them): no ping is sent
before each use, so the first statement finds out. A recipient's action is retried at once on a
fresh connection; an API request is answered 503 with Retry-After; nothing is half-written and
the next request works."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import URL, create_engine, make_url, text
from sqlalchemy.pool import NullPool

from prefcenter.app import create_app
from prefcenter.settings import Settings
from tests.support.factories import (
    Headers,
    issue_links,
    lookup,
    make_topic,
    record_change,
    subscription_status,
    token_of,
)
from tests.support.harness import POSTGRES_ADMIN_URL, reset_postgres

ADA = "ada@example.com"


@pytest.fixture
def database_url(postgres_database: URL) -> str:
    """PostgreSQL only: SQLite has no server to lose the connection to."""
    reset_postgres(postgres_database)
    return postgres_database.render_as_string(hide_password=False)


@pytest.fixture
def pg_client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def drop_pooled_connections(settings: Settings) -> int:
    """What a server restart does to the app's pool: every other session of the database is
    terminated. Returns how many were."""
    name = make_url(settings.database_url).database
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as connection:
            return len(
                connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                ).all()
            )
    finally:
        admin.dispose()


def test_one_click_after_the_pool_died_is_retried_and_lands(
    pg_client: TestClient, settings: Settings, admin_headers: Headers
) -> None:
    make_topic(pg_client, admin_headers)
    record_change(pg_client, admin_headers, ADA, "subscribed", topic="newsletter")
    links = issue_links(pg_client, admin_headers, ADA, topic="newsletter")
    token = token_of(links["unsubscribe_url"])
    assert pg_client.get(f"/u/{token}").status_code == 200  # the pool holds a connection now

    assert drop_pooled_connections(settings) >= 1
    answer = pg_client.post(
        f"/u/{token}",
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert answer.status_code == 200
    assert subscription_status(lookup(pg_client, admin_headers, ADA)[0], "newsletter") == (
        "unsubscribed"
    )


def test_api_request_on_a_dead_connection_is_a_503_then_the_next_one_works(
    pg_client: TestClient, settings: Settings, admin_headers: Headers
) -> None:
    make_topic(pg_client, admin_headers)
    assert drop_pooled_connections(settings) >= 1

    first = pg_client.get("/v1/topics/newsletter", headers=admin_headers)
    second = pg_client.get("/v1/topics/newsletter", headers=admin_headers)

    # The key lookup or the handler's first statement meets the dead connection.
    assert first.status_code in {200, 503}
    if first.status_code == 503:
        assert first.headers["retry-after"] == "1"
        assert first.headers["content-type"] == "application/problem+json"
    assert second.status_code == 200
