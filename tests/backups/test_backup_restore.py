"""`prefcenter db backup` and `prefcenter db restore` on SQLite: the file they write, what they
refuse, and that a restored backup keeps the proof — verify against a checkpoint taken before
the backup passes, and an old backup is caught being behind a later checkpoint."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from prefcenter import migrations
from prefcenter.apikeys.schemas import Scope
from prefcenter.app import create_app
from prefcenter.backups.sqlite_backup import backup_sqlite
from prefcenter.cli import cli
from prefcenter.db import Database
from prefcenter.settings import Settings
from tests.support.factories import make_topic, record_change
from tests.support.harness import TEST_AUDIT_KEY, TEST_SIGNING_KEYS, issue_key, make_settings

runner = CliRunner()
Headers = dict[str, str]


@pytest.fixture
def sqlite_settings(
    sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """A migrated SQLite database of its own, and the CLI's environment pointing at it."""
    path = tmp_path / "data" / "prefcenter.db"
    path.parent.mkdir()
    path.write_bytes(sqlite_template.read_bytes())
    url = f"sqlite:///{path}"
    monkeypatch.setenv("PREFCENTER_DATABASE_URL", url)
    monkeypatch.setenv("PREFCENTER_SIGNING_KEYS", TEST_SIGNING_KEYS)
    monkeypatch.setenv("PREFCENTER_AUDIT_KEY", TEST_AUDIT_KEY)
    monkeypatch.setenv("PREFCENTER_MAIL_URL", "off")
    return make_settings(url)


def db_path(settings: Settings) -> Path:
    path = settings.sqlite_path()
    assert path is not None
    return path


@contextmanager
def service(settings: Settings) -> Iterator[tuple[TestClient, Headers]]:
    """The app in this process, every connection closed at the end (a restore must not run
    under this process's own connections)."""
    database = Database(settings)
    try:
        headers = issue_key(database, Scope.ADMIN, name="crm")
    finally:
        database.dispose()
    with TestClient(create_app(settings)) as client:
        yield client, headers


def subscribe(client: TestClient, headers: Headers, *addresses: str) -> None:
    for address in addresses:
        record_change(client, headers, address, "subscribed", topic="newsletter")


def cli_ok(*args: str) -> str:
    result = runner.invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def cli_refused(*args: str, code: int = 1) -> str:
    result = runner.invoke(cli, list(args))
    assert result.exit_code == code, result.output
    return " ".join(result.stderr.split())


def verify(*args: str) -> tuple[int, dict[str, object]]:
    result = runner.invoke(cli, ["audit", "verify", "--deep", *args])
    return result.exit_code, json.loads(result.stdout.strip().splitlines()[-1])


def event_count(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        (count,) = connection.execute("SELECT count(*) FROM audit_event").fetchone()
        return int(count)
    finally:
        connection.close()


def private_files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


class TestBackup:
    def test_the_backup_is_private_complete_and_stands_alone(
        self, sqlite_settings: Settings, tmp_path: Path
    ) -> None:
        with service(sqlite_settings) as (client, headers):
            make_topic(client, headers)
            subscribe(client, headers, "ada@example.com", "bob@example.com")
            target = tmp_path / "backups" / "prefcenter-1.db"
            target.parent.mkdir()

            printed = cli_ok("db", "backup", str(target))

        assert printed.strip() == str(target)
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert private_files(target.parent) == {"prefcenter-1.db"}  # no temp file, no -wal
        assert event_count(target) == 3

    def test_an_existing_file_is_kept_unless_forced(
        self, sqlite_settings: Settings, tmp_path: Path
    ) -> None:
        target = tmp_path / "backup.db"
        target.write_text("an older backup", encoding="utf-8")

        assert "exists" in cli_refused("db", "backup", str(target))
        assert target.read_text(encoding="utf-8") == "an older backup"

        cli_ok("db", "backup", "--force", str(target))
        assert event_count(target) == 0
        assert stat.S_IMODE(target.stat().st_mode) == 0o600

    def test_the_database_itself_is_refused_as_target(self, sqlite_settings: Settings) -> None:
        path = db_path(sqlite_settings)
        assert "cannot replace" in cli_refused("db", "backup", "--force", str(path))

    def test_every_step_reads_one_snapshot_while_writers_commit(
        self, sqlite_settings: Settings, tmp_path: Path
    ) -> None:
        """Page by page (one page a step here), a writer committing all along: the copy never
        starts over (progress only grows) and holds one moment's rows."""
        path = db_path(sqlite_settings)
        setup = sqlite3.connect(path, isolation_level=None)
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE load (n INTEGER PRIMARY KEY, filler BLOB)")
        for _ in range(300):
            setup.execute("INSERT INTO load (filler) VALUES (randomblob(900))")
        setup.close()
        stop = threading.Event()
        written: list[int] = []

        def write() -> None:
            writer = sqlite3.connect(path, isolation_level=None, timeout=30)
            while not stop.is_set():
                row = writer.execute(
                    "INSERT INTO load (filler) VALUES (randomblob(900)) RETURNING n"
                ).fetchone()
                written.append(row[0])
            writer.close()

        steps: list[int] = []
        thread = threading.Thread(target=write)
        thread.start()
        try:
            while len(written) < 20:
                stop.wait(0.01)
            report = backup_sqlite(
                sqlite_settings,
                tmp_path / "copy.db",
                progress=lambda done, _total: steps.append(done),
                pages_per_step=1,
            )
            while len(written) < 40 + len(steps):
                stop.wait(0.01)
        finally:
            stop.set()
            thread.join()

        assert len(steps) > 50
        assert steps == sorted(steps)
        copy = sqlite3.connect(report.path)
        count, highest = copy.execute("SELECT count(*), max(n) FROM load").fetchone()
        (verdict,) = copy.execute("PRAGMA integrity_check").fetchone()
        copy.close()
        assert verdict == "ok"
        assert count == highest  # gap-free: one moment, no rows from after it
        assert 320 <= count < 300 + len(written)


@pytest.mark.parametrize("command", ["backup", "restore"])
def test_postgresql_points_to_its_own_tools(
    command: str, postgres_database: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert isinstance(postgres_database, URL)
    monkeypatch.setenv(
        "PREFCENTER_DATABASE_URL", postgres_database.render_as_string(hide_password=False)
    )
    monkeypatch.setenv("PREFCENTER_SIGNING_KEYS", TEST_SIGNING_KEYS)
    monkeypatch.setenv("PREFCENTER_AUDIT_KEY", TEST_AUDIT_KEY)
    file = tmp_path / "backup.db"
    file.write_bytes(b"")

    said = cli_refused("db", command, str(file), code=2)

    assert ("pg_dump" if command == "backup" else "pg_restore") in said
    assert "docs/operations.md" in said


class TestRestore:
    def test_an_old_backup_is_caught_behind_a_later_checkpoint(
        self, sqlite_settings: Settings, tmp_path: Path
    ) -> None:
        old, later = tmp_path / "old.db", tmp_path / "later-checkpoint.json"
        with service(sqlite_settings) as (client, headers):
            make_topic(client, headers)
            subscribe(client, headers, "ada@example.com", "bob@example.com")
            cli_ok("db", "backup", str(old))
            subscribe(client, headers, "cy@example.com", "dee@example.com")
            cli_ok("audit", "checkpoint", "--output", str(later))

        cli_ok("db", "restore", str(old))

        path = db_path(sqlite_settings)
        assert event_count(path) == 3
        assert event_count(path.with_name("prefcenter.db.before-restore")) == 5
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert verify()[0] == 0  # a sound chain on its own: only the checkpoint can tell
        code, answer = verify("--checkpoint", str(later))
        assert (code, answer["ok"], answer["first_bad_seq"]) == (1, False, 4)
        assert "tail was deleted" in str(answer["detail"])

    def test_an_older_schema_is_migrated(self, sqlite_settings: Settings, tmp_path: Path) -> None:
        older = tmp_path / "older.db"
        migrations.upgrade(make_settings(f"sqlite:///{older}"), "0011_mail_requests")

        cli_ok("db", "restore", str(older))

        connection = sqlite3.connect(db_path(sqlite_settings))
        (version,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        connection.close()
        assert version == migrations.head_revision(sqlite_settings)

    def test_it_is_refused_while_another_process_has_the_database_open(
        self, sqlite_settings: Settings, tmp_path: Path
    ) -> None:
        backup = tmp_path / "backup.db"
        cli_ok("db", "backup", str(backup))
        path = db_path(sqlite_settings)
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                "c.execute('PRAGMA journal_mode=WAL'); "
                "c.execute('SELECT count(*) FROM contact').fetchone(); "
                "print('open', flush=True); sys.stdin.read()",
                str(path),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == b"open\n"
            before = path.read_bytes()

            assert "open in another process" in cli_refused("db", "restore", str(backup))
            assert path.read_bytes() == before
        finally:
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(timeout=30)
            if holder.stdout is not None:
                holder.stdout.close()
        cli_ok("db", "restore", str(backup))

    @pytest.mark.parametrize(
        ("make_file", "said"),
        [
            (lambda p: p.write_bytes(b"not a database at all " * 100), "not a SQLite database"),
            (
                lambda p: sqlite3.connect(p).execute("CREATE TABLE notes (x)").connection.close(),
                "not a prefcenter database",
            ),
        ],
    )
    def test_a_file_that_is_not_a_prefcenter_database_is_refused(
        self, sqlite_settings: Settings, tmp_path: Path, make_file: object, said: str
    ) -> None:
        assert callable(make_file)
        bogus = tmp_path / "bogus.db"
        make_file(bogus)
        path = db_path(sqlite_settings)
        before = path.read_bytes()

        assert said in cli_refused("db", "restore", str(bogus))

        assert path.read_bytes() == before
        assert private_files(path.parent) == {"prefcenter.db"}

    def test_a_backup_of_a_newer_release_is_refused(
        self, sqlite_settings: Settings, tmp_path: Path
    ) -> None:
        newer = tmp_path / "newer.db"
        cli_ok("db", "backup", str(newer))
        connection = sqlite3.connect(newer, isolation_level=None)
        connection.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")
        connection.close()

        assert "newer prefcenter" in cli_refused("db", "restore", str(newer))

    def test_a_trail_written_under_another_audit_key_is_refused(
        self, sqlite_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        backup = tmp_path / "backup.db"
        with service(sqlite_settings) as (client, headers):
            make_topic(client, headers)
            subscribe(client, headers, "ada@example.com")
            cli_ok("db", "backup", str(backup))
        monkeypatch.setenv("PREFCENTER_AUDIT_KEY", "another-audit-key-0123456789abcdefghijklmn")

        assert "another audit key" in cli_refused("db", "restore", str(backup))

    def test_a_database_kept_by_an_earlier_restore_is_not_overwritten(
        self, sqlite_settings: Settings, tmp_path: Path
    ) -> None:
        backup = tmp_path / "backup.db"
        cli_ok("db", "backup", str(backup))
        cli_ok("db", "restore", str(backup))

        assert "earlier restore" in cli_refused("db", "restore", str(backup))
