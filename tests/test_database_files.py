"""The files of a SQLite database are private to the service's user (SQLite only: PostgreSQL
keeps its own files)."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
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
            # and the file the writers of the host take turns on (sqlite_writers)
            files.append(path.with_name(path.name + ".writers"))
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


class TestSqliteLocksSurviveASecondEngine:
    """POSIX record locks belong to the process, and closing *any* descriptor of a file drops
    every lock the process holds on it. A second engine in the same process (`serve` runs the
    outbox worker beside the app) that opened and closed the database file to make it private
    dropped the app's SQLite locks: another process (a CLI command) closing last then thought
    itself alone, checkpointed and deleted the WAL under the server, which went on reading and
    writing a deleted file (new API keys answered 401; the server's own writes were lost)."""

    def test_another_process_sees_and_keeps_what_the_first_wrote(self, tmp_path: Path) -> None:
        path = tmp_path / "prefcenter.db"
        settings = make_settings(f"sqlite:///{path}")
        migrations.upgrade(settings)
        app = Database(settings)
        try:
            with app.transaction(write=True) as session:
                session.execute(text("CREATE TABLE probe (who TEXT)"))
            worker = Database(settings)  # what serve's outbox worker does
            try:
                with worker.transaction(write=False) as session:
                    session.execute(text("SELECT count(*) FROM probe")).one()
            finally:
                worker.dispose()
            script = (
                "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                "c.execute(\"INSERT INTO probe VALUES ('cli')\"); c.commit(); c.close()"
            )
            subprocess.run([sys.executable, "-c", script, str(path)], check=True)

            with app.transaction(write=False) as session:
                seen = session.execute(text("SELECT who FROM probe")).scalars().all()
            assert seen == ["cli"]
            assert path.with_name(path.name + "-wal").exists()
            with app.transaction(write=True) as session:
                session.execute(text("INSERT INTO probe VALUES ('server')"))
        finally:
            app.dispose()
        check = sqlite3.connect(path)
        try:
            rows = sorted(r[0] for r in check.execute("SELECT who FROM probe"))
        finally:
            check.close()
        assert rows == ["cli", "server"]
