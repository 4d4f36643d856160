"""Owns schema migrations: Alembic, run programmatically against the configured database."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, make_url
from sqlalchemy.exc import OperationalError

from prefcenter.db import migration_connection
from prefcenter.engines import create_private_sqlite_file
from prefcenter.settings import Settings

logger = logging.getLogger(__name__)

# How often a server that started without its database tries it again.
RETRY_S = 1.0
_FAILED = (
    "migrating the database failed; stopping (serve exits with status 1): fix the cause and "
    "start it again"
)
# How often that is logged again while it waits.
_LOG_EVERY_S = 10.0


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


class PendingUpgrade:
    """Migrations waiting, in a thread, for a database that did not answer at start."""

    def __init__(self, settings: Settings, *, on_failure: Callable[[], None]) -> None:
        self.settings = settings
        self.failed = False
        self.done = threading.Event()
        self._on_failure = on_failure
        self._thread = threading.Thread(target=self._main, name="pending-upgrade", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        logged = time.monotonic()
        while True:
            time.sleep(RETRY_S)
            try:
                upgrade(self.settings)
            except OperationalError as exc:
                if not does_not_answer(exc):
                    logger.exception(_FAILED)
                    self._fail()
                    return
                if time.monotonic() - logged >= _LOG_EVERY_S:
                    logged = time.monotonic()
                    logger.warning("still waiting for the database: %s", _first_line(exc))
                continue
            except Exception:
                logger.exception(_FAILED)
                self._fail()
                return
            logger.info("the database answers; migrations applied, /readyz turns 200")
            self.done.set()
            return

    def _fail(self) -> None:
        self.failed = True
        self._on_failure()


# SQLite's OperationalError also means "table already exists", "no such column": a database
# that does not answer (yet) is one of these.
_SQLITE_AWAY = ("database is locked", "unable to open database file", "disk i/o error")


def does_not_answer(exc: OperationalError) -> bool:
    """Whether the database is away (down, restarting, locked by another process), as opposed
    to answering with an error that waiting will not change. On PostgreSQL a migration's own
    mistakes are other errors (ProgrammingError, IntegrityError)."""
    if exc.connection_invalidated:
        return True
    message = str(exc.orig).lower()
    if "sqlite" in type(exc.orig).__module__:
        return any(away in message for away in _SQLITE_AWAY)
    return True


def upgrade_or_wait(settings: Settings, *, on_failure: Callable[[], None]) -> PendingUpgrade | None:
    """Apply migrations now; when the database does not answer (not up yet, restarting), say
    so and keep trying every RETRY_S in a thread (returned), so that the server can start
    meanwhile: `/healthz` answers, `/readyz` answers 503 until the schema is current.
    `on_failure` is called from that thread if migrating fails for another reason."""
    try:
        upgrade(settings)
    except OperationalError as exc:
        if not does_not_answer(exc):
            raise
        logger.warning(
            "the database at %s does not answer (%s): serving anyway, /readyz answers 503 "
            "until it does; trying again every %.0f s",
            _where(settings),
            _first_line(exc),
            RETRY_S,
        )
        pending = PendingUpgrade(settings, on_failure=on_failure)
        pending.start()
        return pending
    return None


def _where(settings: Settings) -> str:
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        return str(url.database)
    return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database}"


def _first_line(exc: OperationalError) -> str:
    return str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc).__name__


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
