"""`prefcenter serve` started before its database answers (PostgreSQL: not there yet; SQLite:
locked by another process) serves meanwhile and migrates once it does; when that deferred
migration then fails for another reason (here a table already there that the first migration
creates), the server stops and `serve` exits 1, saying why in its log."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, make_url, text

from tests.support.harness import POSTGRES_ADMIN_URL
from tests.support.live_server import live_server

pytestmark = pytest.mark.slow

EXIT_WITHIN_S = 60.0
# A table of the first migration, there already: creating it fails (not "cannot connect").
IN_THE_WAY = "CREATE TABLE contact (id INTEGER PRIMARY KEY)"


@pytest.fixture
def absent_postgres() -> Iterator[tuple[str, Callable[[], None]]]:
    """A PostgreSQL database URL that does not exist yet, and how to create it (with the
    table in the way); dropped afterwards."""
    admin_url = make_url(POSTGRES_ADMIN_URL)
    name = f"prefcenter_deferred_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")

    def appear() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        engine = create_engine(admin_url.set(database=name))
        with engine.begin() as connection:
            connection.execute(text(IN_THE_WAY))
        engine.dispose()

    yield admin_url.set(database=name).render_as_string(hide_password=False), appear
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def locked_sqlite(tmp_path: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    """A SQLite file another connection holds an exclusive lock on ("database is locked"
    until it lets go), with the table in the way in its transaction; and how to let go."""
    path = tmp_path / "prefcenter.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute(IN_THE_WAY)

    def appear() -> None:
        holder.execute("COMMIT")

    yield f"sqlite:///{path}", appear
    holder.close()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_deferred_migration_that_fails_stops_serve_with_status_1(
    request: pytest.FixtureRequest, engine: str, tmp_path: Path
) -> None:
    url, appear = request.getfixturevalue(
        "locked_sqlite" if engine == "sqlite" else "absent_postgres"
    )
    env = {"PREFCENTER_SQLITE_BUSY_TIMEOUT_S": "1"}  # "locked" at once
    with live_server(
        url, log_dir=tmp_path / "logs", wait_until_ready=False, extra_env=env
    ) as server:
        deadline = time.monotonic() + EXIT_WITHIN_S
        with httpx.Client(base_url=server.base_url, timeout=2.0) as client:
            while "does not answer" not in server.log():
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.05)
            while True:  # serving meanwhile: alive, not ready
                assert time.monotonic() < deadline, server.log()
                try:
                    assert client.get("/readyz").status_code == 503
                    assert client.get("/healthz").status_code == 200
                    break
                except httpx.TransportError:
                    time.sleep(0.05)
        appear()
        code = server.process.wait(timeout=EXIT_WITHIN_S)
        log = server.log()

    assert code == 1, log
    assert "migrating the database failed; stopping" in log, log
    assert "contact" in log  # the reason: the table in the way
    assert "the database answers; migrations applied" not in log
