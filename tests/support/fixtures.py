"""The fixtures every test may ask for (a pytest plugin, loaded by tests/conftest.py): each
database test runs on SQLite and on PostgreSQL, on a schema built by the migrations, each test
on an empty database."""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import URL

from prefcenter import migrations
from prefcenter.apikeys.schemas import Scope
from prefcenter.app import create_app
from prefcenter.db import Database
from prefcenter.settings import Settings
from tests.support.factories import Headers, make_topic
from tests.support.harness import (
    ENGINES,
    POSTGRES_ADMIN_URL,
    issue_key,
    make_settings,
    reset_postgres,
)


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


@pytest.fixture
def admin_headers(database: Database) -> Headers:
    return issue_key(database, Scope.ADMIN, name="admin")


@pytest.fixture
def writer_headers(database: Database) -> Headers:
    return issue_key(database, Scope.CONSENT_WRITE, Scope.CONSENT_READ, name="crm")


@pytest.fixture
def reader_headers(database: Database) -> Headers:
    return issue_key(database, Scope.CONSENT_READ, name="reader")


@pytest.fixture
def newsletter(client: TestClient, admin_headers: Headers) -> str:
    """The key of a marketing topic `newsletter`."""
    return str(make_topic(client, admin_headers, "newsletter")["key"])


@pytest.fixture(autouse=True)
def _no_log_handler_left_on_a_closed_stream() -> Iterator[None]:
    """A command run through typer's CliRunner configures logging onto the runner's own stderr,
    which is closed when the command ends; a thread still running (a test SMTP server) would
    then log into the closed stream. Such handlers are removed after each test."""
    yield
    loggers = [logging.getLogger(), *map(logging.getLogger, logging.root.manager.loggerDict)]
    for logger in loggers:
        for handler in list(logger.handlers):
            stream = getattr(handler, "stream", None)
            if stream is not None and getattr(stream, "closed", False):
                logger.removeHandler(handler)
