"""Fixtures: every database test runs on SQLite and on PostgreSQL, on a schema built by the
migrations, each test on an empty database."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import URL

from prefcenter import migrations
from prefcenter.apikeys.schemas import Scope
from prefcenter.apikeys.service import create_api_key
from prefcenter.app import create_app
from prefcenter.db import Database
from prefcenter.settings import Settings

ENGINES = ("sqlite", "postgresql")
TEST_SIGNING_KEYS = "t1:test-signing-secret-0123456789abcdefghij"
TEST_AUDIT_KEY = "test-audit-key-0123456789abcdefghijklmnop"
POSTGRES_ADMIN_URL = os.environ.get(
    "PREFCENTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
# Tables emptied between tests; audit_head is reset rather than emptied.
_TABLES = (
    "idempotency_record",
    "audit_evidence",
    "audit_free_text",
    "audit_event",
    "subscription",
    "suppression",
    "bounce",
    "inbound_receipt",
    "topic",
    "contact",
    "erased_address",
    "api_key",
    "admin_session",
    "admin_user",
    "admin_sign_in_attempt",
    "mail_request",
    "outbox_attempt",
    "outbox_message",
    "webhook_endpoint_event",
    "webhook_endpoint",
    "notice_version",
    "notice",
)


def make_settings(database_url: str, **overrides: Any) -> Settings:
    overrides.setdefault("signing_keys", TEST_SIGNING_KEYS)
    overrides.setdefault("audit_key", TEST_AUDIT_KEY)
    overrides.setdefault("base_url", "http://testserver")
    # The service's own mail is off unless a test turns it on (on SQLite it would default to
    # a Maildir beside the database).
    overrides.setdefault("mail_url", "off")
    return Settings(_env_file=None, database_url=database_url, **overrides)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[URL]:
    """A throwaway PostgreSQL database for this test run, migrated once.

    PostgreSQL being down is a failure, never a skip: CI must not pass without it.
    """
    admin_url = make_url(POSTGRES_ADMIN_URL)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"prefcenter_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {admin_url.render_as_string(hide_password=True)}: "
            f"{exc}. Start it (see README) or set PREFCENTER_TEST_POSTGRES_URL.",
            pytrace=False,
        )
    url = admin_url.set(database=name)
    migrations.upgrade(make_settings(url.render_as_string(hide_password=False)))
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    migrations.upgrade(make_settings(f"sqlite:///{path}"))
    return path


def reset_postgres(url: URL) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(_TABLES)} RESTART IDENTITY CASCADE"))
        connection.execute(text("UPDATE audit_head SET seq = 0, hash = repeat('0', 64)"))
    engine.dispose()


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated database of each engine in turn."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "prefcenter.db"
        shutil.copyfile(template, path)
        return f"sqlite:///{path}"
    url: URL = request.getfixturevalue("postgres_database")
    reset_postgres(url)
    return url.render_as_string(hide_password=False)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    database = Database(settings)
    yield database
    database.dispose()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def issue_key(database: Database, *scopes: Scope, name: str = "test") -> dict[str, str]:
    """Authorization headers for a new API key with these scopes."""
    with database.transaction(write=True) as session:
        issued = create_api_key(session, name=name, scopes=list(scopes))
    return {"Authorization": f"Bearer {issued.secret}"}


@pytest.fixture
def admin_headers(database: Database) -> dict[str, str]:
    return issue_key(database, Scope.ADMIN, name="admin")


@pytest.fixture
def writer_headers(database: Database) -> dict[str, str]:
    return issue_key(database, Scope.CONSENT_WRITE, Scope.CONSENT_READ, name="crm")
