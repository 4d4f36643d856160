"""Owns schema migrations: Alembic, run programmatically against the configured database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from prefcenter.db import create_private_sqlite_file, migration_connection
from prefcenter.settings import Settings


def _script_location() -> Path:
    packaged = Path(__file__).parent / "_migrations"  # inside a built wheel
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "alembic"  # a source checkout


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_script_location()))
    config.set_main_option("path_separator", "os")
    config.attributes["database_url"] = settings.database_url
    # Migrations that compute keyed hashes of existing rows (0003) need the audit key.
    config.attributes["settings"] = settings
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Apply migrations. On PostgreSQL an advisory lock makes concurrent starts take turns
    (the second finds nothing left to do); SQLite's own write lock does the same there."""
    config = alembic_config(settings)
    if settings.is_sqlite:
        create_private_sqlite_file(settings)
        command.upgrade(config, revision)
        return
    with migration_connection(settings) as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(settings: Settings, revision: str) -> None:
    command.downgrade(alembic_config(settings), revision)


def head_revision(settings: Settings) -> str | None:
    return ScriptDirectory.from_config(alembic_config(settings)).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def known_revisions(settings: Settings) -> frozenset[str]:
    return frozenset(
        rev.revision
        for rev in ScriptDirectory.from_config(alembic_config(settings)).walk_revisions()
    )


def is_behind(current: str | None, *, head: str | None, known: frozenset[str]) -> bool:
    """True when the database lacks migrations this code needs.

    A revision this code does not know is newer (a later release migrated first, as in a
    rolling deploy with expand-only migrations): not "behind", so older hosts stay ready.
    """
    if current is None:
        return True
    return current in known and current != head
