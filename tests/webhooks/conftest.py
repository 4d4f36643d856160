"""Fixtures of the webhook tests: settings that let deliveries reach the receiver on
127.0.0.1, an app, an admin and a writer key, a topic, and a real receiver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from prefcenter.app import create_app
from prefcenter.settings import Settings
from tests.support.factories import Headers
from tests.support.harness import make_settings
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


# The shared keys and topic (tests.support.fixtures), under these tests' shorter names.
@pytest.fixture
def admin(admin_headers: Headers) -> Headers:
    return admin_headers


@pytest.fixture
def writer(writer_headers: Headers) -> Headers:
    return writer_headers


@pytest.fixture
def topic(newsletter: str) -> str:
    assert newsletter == TOPIC
    return newsletter


@pytest.fixture
def hooks() -> Iterator[Receiver]:
    with receiver() as running:
        yield running
