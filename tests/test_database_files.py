"""The files of a SQLite database are private to the service's user (SQLite only: PostgreSQL
keeps its own files)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from prefcenter import migrations
from prefcenter.db import Database
from tests.support.harness import make_settings


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The umask most systems run services with (022): files world-readable unless the
    service asks otherwise, so that these tests can fail."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("usual_umask")
class TestSqliteFiles:
    def test_a_new_database_and_its_wal_and_shm_are_0600(self, tmp_path: Path) -> None:
        path = tmp_path / "data" / "prefcenter.db"
        settings = make_settings(f"sqlite:///{path}")
        migrations.upgrade(settings)
        database = Database(settings)
        try:
            with database.transaction(write=True) as session:
                session.execute(text("UPDATE audit_head SET seq = seq"))
            # Checked while a connection holds the database open: SQLite removes the WAL
            # and SHM files when the last one closes.
            files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
            assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
        finally:
            database.dispose()

    def test_the_app_creating_the_database_makes_it_0600(self, tmp_path: Path) -> None:
        path = tmp_path / "fresh.db"
        database = Database(make_settings(f"sqlite:///{path}"))
        try:
            with database.transaction(write=True) as session:
                session.execute(text("CREATE TABLE probe (x INTEGER)"))
            files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
            assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
        finally:
            database.dispose()

    def test_an_existing_database_keeps_its_mode(self, tmp_path: Path) -> None:
        path = tmp_path / "shared.db"
        path.touch(mode=0o640)
        path.chmod(0o640)

        migrations.upgrade(make_settings(f"sqlite:///{path}"))

        assert mode(path) == 0o640
