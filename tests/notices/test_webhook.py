"""Publishing queues `notice.published` for the endpoints that want it, in the same
transaction, with what receivers should know of the version (no text)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select

from prefcenter.app import create_app
from prefcenter.db import Database
from prefcenter.outbox.models import OutboxMessage
from prefcenter.settings import Settings
from tests.notices.helpers import TEXT, publish, put_notice
from tests.support.factories import Headers
from tests.support.harness import make_settings
from tests.webhooks.helpers import create_endpoint


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, webhooks_allow_private=True)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def test_publishing_queues_notice_published(
    client: TestClient, admin_headers: Headers, database: Database
) -> None:
    create_endpoint(client, admin_headers, "http://127.0.0.1:9/hooks", ["notice.published"])
    put_notice(client, admin_headers)
    version = publish(client, admin_headers, "v1", material=False)
    with database.transaction(write=False) as session:
        (row,) = session.exec(
            select(OutboxMessage).where(col(OutboxMessage.kind) == "webhook")
        ).all()
    assert row.payload["type"] == "notice.published"
    data = row.payload["data"]
    assert data["notice"] == "privacy@v1"
    assert data["sha256"] == version["sha256"]
    assert data["material"] is False
    assert TEXT.strip() not in str(row.payload)
