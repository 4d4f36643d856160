"""The unsubscribe page (`/u`, served by the fast lane) names the privacy policy version in
force, as the preference center does, without a read of its own per request: the versions
are kept for a few seconds per process."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient

from prefcenter.apikeys.schemas import Scope
from prefcenter.db import Database, utcnow
from prefcenter.preference_center.policy_in_force import PolicyVersions
from tests.notices.helpers import publish, put_notice
from tests.preference_center.test_router import ADA, visit
from tests.support.factories import Headers, issue_links, make_topic, record_change, token_of
from tests.support.harness import issue_key

PAST = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
POLICY_URL = "https://example.org/privacy/2026-01"


@pytest.fixture
def links_headers(database: Database) -> Headers:
    return issue_key(database, Scope.LINKS, name="mailer")


def unsubscribe_token(
    client: TestClient, admin_headers: Headers, writer_headers: Headers, links_headers: Headers
) -> str:
    topic = str(make_topic(client, admin_headers, "newsletter", name="Newsletter")["key"])
    record_change(client, writer_headers, ADA, "subscribed", topic=topic)
    return token_of(issue_links(client, links_headers, ADA, topic=topic)["unsubscribe_url"])


def publish_policy(client: TestClient, admin_headers: Headers, version: str, **fields: Any) -> None:
    publish(
        client,
        admin_headers,
        version,
        effective_at=PAST,
        reason="The first version.",
        material=False,
        **fields,
    )


def test_the_page_names_the_version_in_force_and_links_it(
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    links_headers: Headers,
) -> None:
    put_notice(client, admin_headers)
    publish_policy(client, admin_headers, "2026-01", url=POLICY_URL)
    # Published, not in force yet: the page keeps naming the one in force.
    publish(client, admin_headers, "2027-01", material=False)
    token = unsubscribe_token(client, admin_headers, writer_headers, links_headers)
    page = visit(client, "GET", f"/u/{token}")
    assert page.status_code == 200
    assert f'<a href="{POLICY_URL}">Privacy policy</a>' in page.text
    assert "version 2026-01, in force since 2026-01-05" in page.text
    assert "2027-01" not in page.text
    german = visit(client, "GET", f"/u/{token}?lang=de")
    assert "Version 2026-01, gültig seit 2026-01-05" in german.text
    # The one-click answer itself stays as it was.
    done = visit(client, "POST", f"/u/{token}", data={"via": "page"})
    assert done.status_code == 200
    assert "2026-01" not in done.text


def test_without_a_privacy_policy_the_page_names_none(
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    links_headers: Headers,
) -> None:
    put_notice(client, admin_headers, key="terms", kind="terms")
    publish_policy(client, admin_headers, "terms-2026-01", key="terms")
    token = unsubscribe_token(client, admin_headers, writer_headers, links_headers)
    page = visit(client, "GET", f"/u/{token}")
    assert page.status_code == 200
    assert "Privacy policy" not in page.text
    assert "terms-2026-01" not in page.text


def test_the_versions_are_read_again_only_after_the_refresh_period(
    client: TestClient, admin_headers: Headers, database: Database
) -> None:
    clock = [100.0]
    versions = PolicyVersions(database, refresh_seconds=5.0, clock=lambda: clock[0])

    async def in_force() -> str | None:
        found = await versions.in_force(utcnow())
        return None if found is None else found.version

    assert anyio.run(in_force) is None
    put_notice(client, admin_headers)
    publish_policy(client, admin_headers, "2026-01")
    clock[0] += 4.9
    assert anyio.run(in_force) is None  # kept: no read
    clock[0] += 0.1
    assert anyio.run(in_force) == "2026-01"


def test_a_version_taking_effect_later_is_picked_when_its_time_comes(
    client: TestClient, admin_headers: Headers, database: Database
) -> None:
    put_notice(client, admin_headers)
    publish_policy(client, admin_headers, "2026-01")
    publish(client, admin_headers, "2027-01", material=False)
    versions = PolicyVersions(database)

    async def at(when: datetime) -> str | None:
        found = await versions.in_force(when)
        return None if found is None else found.version

    assert anyio.run(at, utcnow()) == "2026-01"
    assert anyio.run(at, utcnow() + timedelta(days=40)) == "2027-01"
    assert anyio.run(at, PAST - timedelta(seconds=1)) is None
