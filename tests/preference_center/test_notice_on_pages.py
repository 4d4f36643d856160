"""The preference center names the privacy policy version in force, and a save records it in
its audit event as `notice: "<key>@<version>"` (the form POST /v1/consents stores)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from prefcenter.apikeys.schemas import Scope
from prefcenter.db import Database
from tests.notices.helpers import POLICY, publish, put_notice
from tests.preference_center.test_router import ADA, last_event, visit
from tests.support.factories import Headers, issue_links, make_topic, record_change, token_of
from tests.support.harness import issue_key

PAST = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
POLICY_URL = "https://example.org/privacy/2026-01"


@pytest.fixture
def links_headers(database: Database) -> Headers:
    return issue_key(database, Scope.LINKS, name="mailer")


def manage_token(
    client: TestClient, admin_headers: Headers, writer_headers: Headers, links_headers: Headers
) -> str:
    topic = str(make_topic(client, admin_headers, "newsletter", name="Newsletter")["key"])
    record_change(client, writer_headers, ADA, "subscribed", topic=topic)
    return token_of(issue_links(client, links_headers, ADA, topic=topic)["preferences_url"])


def in_force_policy(client: TestClient, admin_headers: Headers) -> None:
    put_notice(client, admin_headers)
    publish(
        client,
        admin_headers,
        "2026-01",
        effective_at=PAST,
        reason="The first version.",
        material=False,
        url=POLICY_URL,
    )


def test_without_a_privacy_policy_the_page_names_none(
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    links_headers: Headers,
) -> None:
    put_notice(client, admin_headers, key="terms", kind="terms")
    publish(client, admin_headers, "terms-2026-01", key="terms", effective_at=PAST, reason="First.")
    token = manage_token(client, admin_headers, writer_headers, links_headers)
    page = visit(client, "GET", f"/p/{token}")
    assert page.status_code == 200
    assert "Privacy policy" not in page.text
    assert "terms-2026-01" not in page.text
    assert "in force since" not in page.text


def test_the_page_names_the_version_in_force_and_links_it(
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    links_headers: Headers,
) -> None:
    in_force_policy(client, admin_headers)
    token = manage_token(client, admin_headers, writer_headers, links_headers)
    page = visit(client, "GET", f"/p/{token}")
    assert page.status_code == 200
    assert f'<a href="{POLICY_URL}">Privacy policy</a>' in page.text
    assert "version 2026-01, in force since 2026-01-05" in page.text
    german = visit(client, "GET", f"/p/{token}?lang=de")
    assert "Datenschutzerklärung" in german.text
    assert "Version 2026-01, gültig seit 2026-01-05" in german.text


def test_a_version_effective_in_the_future_is_not_shown_as_in_force(
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    links_headers: Headers,
) -> None:
    in_force_policy(client, admin_headers)
    publish(client, admin_headers, "2099-01", effective_in=timedelta(days=60))
    token = manage_token(client, admin_headers, writer_headers, links_headers)
    page = visit(client, "GET", f"/p/{token}")
    assert "version 2026-01, in force since 2026-01-05" in page.text
    assert "2099-01" not in page.text


def test_only_a_future_version_means_no_policy_line(
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    links_headers: Headers,
) -> None:
    put_notice(client, admin_headers)
    publish(client, admin_headers, "2099-01", effective_in=timedelta(days=60))
    token = manage_token(client, admin_headers, writer_headers, links_headers)
    page = visit(client, "GET", f"/p/{token}")
    assert "Privacy policy" not in page.text


def test_saving_records_the_version_in_force_in_the_event(
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    links_headers: Headers,
    database: Database,
) -> None:
    in_force_policy(client, admin_headers)
    publish(client, admin_headers, "2099-01", effective_in=timedelta(days=60))
    token = manage_token(client, admin_headers, writer_headers, links_headers)
    saved = visit(client, "POST", f"/p/{token}", data={"shown": "newsletter", "action": "save"})
    assert saved.status_code == 200
    event = last_event(database)
    assert event.source == "preference_center"
    assert event.context["notice"] == f"{POLICY}@2026-01"
    assert "version 2026-01" in saved.text


def test_saving_without_a_policy_records_no_notice(
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    links_headers: Headers,
    database: Database,
) -> None:
    token = manage_token(client, admin_headers, writer_headers, links_headers)
    saved = visit(client, "POST", f"/p/{token}", data={"shown": "newsletter", "action": "save"})
    assert saved.status_code == 200
    assert "notice" not in last_event(database).context
