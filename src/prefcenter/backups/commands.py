"""Owns `prefcenter db backup FILE` and `prefcenter db restore FILE`: the shell around
backups.sqlite_backup and backups.restore."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from prefcenter.audit.keys import AuditKeys
from prefcenter.backups.errors import BackupRefused, NotForThisDatabase
from prefcenter.backups.restore import restore_sqlite
from prefcenter.backups.sqlite_backup import backup_sqlite
from prefcenter.settings import Settings

# Exit statuses: a refusal (the file exists, the database is in use, not a backup) is 1; a
# command that does not apply to the configured database (PostgreSQL) is 2.
REFUSED = 1
NOT_FOR_THIS_DATABASE = 2


def add_backup_commands(group: typer.Typer, load_settings: Callable[[], Settings]) -> None:
    """Register `backup` and `restore` on the `db` command group; `load_settings` is the
    CLI's (a configuration error prints and exits 2)."""
    stderr = Console(stderr=True)

    def refused(exc: BackupRefused) -> typer.Exit:
        stderr.print(f"[red]error:[/red] {exc}")
        return typer.Exit(NOT_FOR_THIS_DATABASE if isinstance(exc, NotForThisDatabase) else REFUSED)

    @group.command("backup")
    def backup(
        file: Annotated[Path, typer.Argument(help="Where to write the backup (a SQLite file).")],
        force: Annotated[bool, typer.Option("--force", help="Replace FILE if it exists.")] = False,
    ) -> None:
        """Back up the SQLite database into FILE while the service serves (SQLite's online
        backup API: one consistent moment, writers never blocked). FILE is created 0600 and
        appears only when complete. Keep the signing and audit keys beside it. On PostgreSQL:
        exit status 2 and a pointer to pg_dump / pg_basebackup."""
        settings = load_settings()
        try:
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=stderr,
                transient=True,
            ) as bar:
                task = bar.add_task("copying pages", total=None)
                report = backup_sqlite(
                    settings,
                    file,
                    force=force,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
        except BackupRefused as exc:
            raise refused(exc) from exc
        stderr.print(f"backed up {report.pages:,} pages ({report.bytes:,} bytes) to {report.path}")
        stderr.print(
            "Keep the signing keys and the audit key beside it (see docs/operations.md), "
            "and take an `audit checkpoint` to keep elsewhere."
        )
        sys.stdout.write(f"{report.path}\n")

    @group.command("restore")
    def restore(
        file: Annotated[Path, typer.Argument(help="A backup made by `prefcenter db backup`.")],
    ) -> None:
        """Replace the SQLite database with FILE. Stop the service first: refused while any
        process has the database open. Checks FILE (integrity, a prefcenter schema this
        release knows, the trail written under the configured audit key), installs it
        atomically, keeps the old database as <db>.before-restore, and applies migrations
        if FILE is older. Then run `prefcenter audit verify --checkpoint <your latest>`."""
        settings = load_settings()
        try:
            report = restore_sqlite(settings, file, keys=AuditKeys.from_settings(settings))
        except BackupRefused as exc:
            raise refused(exc) from exc
        if report.previous is not None:
            stderr.print(f"the database it replaced is kept as {report.previous}")
        migrated = (
            f", migrated to {report.revision}" if report.revision != report.backup_revision else ""
        )
        stderr.print(
            f"restored {file} into {report.database} (schema {report.backup_revision}{migrated})"
        )
        stderr.print(
            "Now check the trail against the latest checkpoint you kept: "
            "prefcenter audit verify --deep --checkpoint FILE"
        )
