"""Owns `prefcenter db backup FILE` on SQLite: SQLite's online backup API, page by page, from
one read snapshot, into a private temp file renamed into place when complete."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prefcenter.backups.errors import BackupRefused, NotForThisDatabase
from prefcenter.backups.files import (
    fsync_directory,
    fsync_file,
    private_temp_path,
    removed_on_failure,
)
from prefcenter.settings import Settings

# Pages copied per step (4 KiB each: 4 MiB): the progress bar moves, and the copy can be
# interrupted between steps.
PAGES_PER_STEP = 1024
Progress = Callable[[int, int], None]  # (pages copied, pages in all)


@dataclass(frozen=True, slots=True)
class BackupReport:
    path: Path
    pages: int
    bytes: int


def database_file(settings: Settings) -> Path:
    """The configured SQLite database file; refused for PostgreSQL and in-memory SQLite."""
    path = settings.sqlite_path()
    if path is None:
        if settings.is_sqlite:
            raise NotForThisDatabase("the database is in memory: there is nothing to back up")
        raise NotForThisDatabase(
            "this database is PostgreSQL: back it up with PostgreSQL's own tools "
            "(pg_dump -Fc for a dump, pg_basebackup with WAL archiving for point-in-time "
            "recovery; see docs/operations.md, 'Backup and restore'), and keep the signing "
            "keys, the audit key and your checkpoints beside it"
        )
    if not path.is_file():
        raise BackupRefused(f"there is no database at {path}")
    return path


def backup_sqlite(
    settings: Settings,
    target: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
    pages_per_step: int = PAGES_PER_STEP,
) -> BackupReport:
    """Copy the database into `target`, consistent as of one moment, while it serves.

    The source connection holds one read transaction for the whole copy: in WAL mode that
    blocks no writer, and every step reads the same snapshot. (Without it SQLite restarts the
    copy whenever another connection commits, which under steady writes may be forever.) The
    copy goes into a 0600 temp file beside `target`, is checked (`PRAGMA quick_check`), made
    self-contained (rollback journal, no `-wal` needed), fsynced, and only then named
    `target`: an interrupted backup never looks like a complete one. An existing `target` is
    refused unless `force`.
    """
    source_path = database_file(settings)
    target = target.absolute()
    if target.exists() and not force:
        raise BackupRefused(f"{target} exists: choose another name, or pass --force to replace it")
    if target.resolve() == source_path.resolve():
        raise BackupRefused("the backup cannot replace the database it copies")
    if not target.parent.is_dir():
        raise BackupRefused(f"there is no directory {target.parent}")
    busy_ms = int(settings.sqlite_busy_timeout_s * 1000)
    with removed_on_failure(private_temp_path(target, "backup")) as temp:
        source = sqlite3.connect(source_path, isolation_level=None, timeout=busy_ms / 1000)
        copy = sqlite3.connect(temp, isolation_level=None)
        try:
            source.execute("BEGIN")
            source.execute("SELECT count(*) FROM sqlite_schema").fetchone()  # the snapshot
            source.backup(
                copy,
                pages=pages_per_step,
                progress=(
                    None
                    if progress is None
                    else lambda _status, remaining, total: progress(total - remaining, total)
                ),
            )
            source.execute("COMMIT")
            (pages,) = copy.execute("PRAGMA page_count").fetchone()
            (verdict,) = copy.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise BackupRefused(f"the copy does not check ({verdict}); nothing was written")
            copy.execute("PRAGMA journal_mode=DELETE")
        finally:
            copy.close()
            source.close()
        fsync_file(temp)
        if force:
            os.replace(temp, target)
        else:
            try:
                os.link(temp, target)  # refuses, unlike rename, a target made meanwhile
            except FileExistsError as exc:
                raise BackupRefused(f"{target} appeared meanwhile; nothing was replaced") from exc
            temp.unlink()
        fsync_directory(target.parent)
    return BackupReport(path=target, pages=pages, bytes=target.stat().st_size)
