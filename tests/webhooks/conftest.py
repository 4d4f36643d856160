"""Fixtures of the webhook tests: settings that let deliveries reach the receiver on
127.0.0.1, an app, an admin and a writer key, a topic, and a real receiver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from prefcenter.apikeys.schemas import Scope
from prefcenter.app import create_app
from prefcenter.db import Database
from prefcenter.settings import Settings
from tests.support.factories import Headers, make_topic
from tests.support.harness import issue_key, make_settings
from tests.webhooks.receiver import Receiver, receiver

TOPIC = "newsletter"


@pytest.fixture
def settings(database_url: str) -> Settings:
    """The receiver is on 127.0.0.1: deliveries there are allowed in these tests only."""
    return make_settings(database_url, webhooks_allow_private=True)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def admin(database: Database) -> Headers:
    return issue_key(database, Scope.ADMIN, name="admin")


@pytest.fixture
def writer(database: Database) -> Headers:
    return issue_key(database, Scope.CONSENT_WRITE, Scope.CONSENT_READ, name="crm")


@pytest.fixture
def topic(client: TestClient, admin: Headers) -> str:
    make_topic(client, admin, TOPIC)
    return TOPIC


@pytest.fixture
def hooks() -> Iterator[Receiver]:
    with receiver() as running:
        yield running
