"""Owns `prefcenter db restore FILE` on SQLite: check that the file is a prefcenter database
this code can run and that the configured audit key wrote its trail, then put it in place
atomically, keep the database it replaces, and bring the schema up to date."""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from prefcenter import migrations
from prefcenter.audit.key_check import key_matches_trail
from prefcenter.audit.keys import AuditKeys
from prefcenter.backups.errors import BackupRefused, NotForThisDatabase
from prefcenter.backups.files import (
    fsync_directory,
    fsync_file,
    in_use_by_another_process,
    private_temp_path,
    removed_on_failure,
    sidecars,
)
from prefcenter.settings import Settings

# Tables every prefcenter database has had since its first migration.
_OUR_TABLES = frozenset({"alembic_version", "contact", "topic", "subscription"})
PREVIOUS_SUFFIX = ".before-restore"


@dataclass(frozen=True, slots=True)
class RestoreReport:
    database: Path
    # Where the database the restore replaced was kept; None when there was none.
    previous: Path | None
    # The backup's schema revision, and the one it was migrated to (the same when current).
    backup_revision: str
    revision: str


def backup_revision(connection: sqlite3.Connection, known: frozenset[str]) -> str:
    """The migration revision of a backup that is a sound prefcenter database at a revision
    this code knows; refused otherwise (a revision it does not know is a newer release's)."""
    try:
        problems = [row[0] for row in connection.execute("PRAGMA integrity_check")]
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_schema")}
    except sqlite3.DatabaseError as exc:
        raise BackupRefused(f"not a SQLite database ({exc})") from exc
    if problems != ["ok"]:
        raise BackupRefused(f"the backup is damaged: {'; '.join(problems[:3])}")
    if not tables >= _OUR_TABLES:
        raise BackupRefused("not a prefcenter database (no alembic_version or no consent tables)")
    versions = [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]
    if len(versions) != 1:
        raise BackupRefused(f"the backup's schema revision is unclear: {versions}")
    if versions[0] not in known:
        raise BackupRefused(
            f"the backup is at schema revision {versions[0]!r}, which this release does not "
            "know: it was made by a newer prefcenter, restore it with that version"
        )
    return str(versions[0])


def _written_under_other_key(path: Path, keys: AuditKeys) -> bool:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with Session(engine) as session:
            return key_matches_trail(session, keys) is False
    except DBAPIError:
        return False  # a schema before the keyed digests: nothing to tell by
    finally:
        engine.dispose()


def _fold_stale_wal(database: Path) -> None:
    """A `-wal` left by a crash holds committed changes: checkpoint them into the database
    before it is kept aside, or the copy kept would lack them."""
    if database.with_name(database.name + "-wal").exists():
        connection = sqlite3.connect(database, isolation_level=None)
        try:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            connection.close()


def restore_sqlite(settings: Settings, backup: Path, *, keys: AuditKeys) -> RestoreReport:
    """Replace the configured SQLite database with `backup`, the service being stopped.

    Refused, with nothing changed, when: the database is PostgreSQL or in memory; some process
    has the database open (a `serve` or `worker` still running); `<db>.before-restore` exists
    from an earlier restore; the backup is not a sound prefcenter database at a revision this
    code knows; or its trail was written under another audit key. Otherwise the backup is
    copied into a 0600 temp file beside the database, checked there (what is checked is what
    is installed), fsynced, and renamed over the database; the old one stays as
    `<db>.before-restore`. Then the migrations run if the backup is older than this code.
    """
    target = settings.sqlite_path()
    if target is None:
        if settings.is_sqlite:
            raise NotForThisDatabase("the database is in memory: there is nothing to restore")
        raise NotForThisDatabase(
            "this database is PostgreSQL: restore it with pg_restore (a pg_dump) or your "
            "point-in-time recovery; see docs/operations.md, 'Backup and restore'"
        )
    target = target.absolute()
    if not backup.is_file():
        raise BackupRefused(f"there is no backup file at {backup}")
    if target.exists() and backup.resolve() == target.resolve():
        raise BackupRefused("that is the database itself, not a backup of it")
    # Before this process opens the database in any way (see in_use_by_another_process).
    if in_use_by_another_process(target):
        raise BackupRefused(
            f"{target} is open in another process: stop `prefcenter serve` and every "
            "`prefcenter worker` first"
        )
    previous = target.with_name(target.name + PREVIOUS_SUFFIX)
    if target.exists() and previous.exists():
        raise BackupRefused(
            f"{previous} is there from an earlier restore: move it away (or delete it) first"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with removed_on_failure(private_temp_path(target, "restore")) as temp:
        shutil.copyfile(backup, temp)  # into the 0600 file: the mode stays
        connection = sqlite3.connect(temp, isolation_level=None)
        try:
            revision = backup_revision(connection, migrations.known_revisions(settings))
        finally:
            connection.close()
        if _written_under_other_key(temp, keys):
            raise BackupRefused(
                f"the backup's audit trail was written under another audit key than the one "
                f"configured ({keys.key_id}): set PREFCENTER_AUDIT_KEY, or put back the "
                ".audit-key file, that belongs with this backup (a key file generated just now "
                "must be replaced by it)"
            )
        for leftover in sidecars(temp):
            leftover.unlink(missing_ok=True)
        fsync_file(temp)
        kept: Path | None = None
        if target.exists():
            _fold_stale_wal(target)
            os.link(target, previous)
            kept = previous
        os.replace(temp, target)
        for stale in sidecars(target):  # they belonged to the database just replaced
            stale.unlink(missing_ok=True)
        fsync_directory(target.parent)
    migrations.upgrade(settings)
    current = migrations.head_revision(settings) or revision
    return RestoreReport(database=target, previous=kept, backup_revision=revision, revision=current)
