"""Owns building the engines: SQLite's pragmas and file mode, PostgreSQL's session settings,
and the connection for the migration lock. db.py builds on these."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from sqlalchemy import Engine, create_engine, event

from prefcenter.settings import Settings

# Connection execution option of a write transaction: SQLite then begins it IMMEDIATE.
WRITE_OPTION = "prefcenter_write"


def make_engine(settings: Settings) -> Engine:
    if settings.is_sqlite:
        return _sqlite_engine(settings)
    return create_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        # No ping before every checkout (a round trip per request). A connection that died
        # (a server restart) fails its first statement instead; SQLAlchemy then drops every
        # pooled connection, that transaction is retried once by `run_in_transaction` or
        # answered 503 + Retry-After by `transaction`, and nothing is half-written either way.
        pool_recycle=1800,
        # A 2xx means committed to disk: never run with asynchronous commit, whatever the
        # server's default says.
        connect_args={"options": session_options(settings)},
    )


def session_options(settings: Settings) -> str:
    """PostgreSQL settings of each of the service's connections. The lock timeout makes a
    request that waits behind a long-held lock fail (a 503, see `Database.transaction`)
    instead of holding its pooled connection and worker thread until the lock goes: a stuck
    session elsewhere must not fill the pool."""
    lock_ms = round(settings.db_lock_timeout_s * 1000)
    statement_ms = round(settings.db_statement_timeout_s * 1000)
    return f"-c synchronous_commit=on -c lock_timeout={lock_ms} -c statement_timeout={statement_ms}"


def create_private_sqlite_file(settings: Settings) -> None:
    """Create a file-backed SQLite database as an empty file of mode 0600 before SQLite opens
    it, unless it exists.

    SQLite would create it with 0644 under the usual umask: every local user could read every
    address and the audit trail. It gives its `-wal`, `-shm` and `-journal` files the database
    file's mode, so they follow. An existing file keeps the mode its operator gave it.
    """
    path = settings.sqlite_path()
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL, so that an existing file is never opened here: closing any descriptor of a file
    # drops every POSIX lock this process holds on it, SQLite's included. A second engine in a
    # process whose first has the database open (serve's outbox worker beside the app) would
    # leave the first without its locks, and another process closing last would then delete
    # the WAL under it. Another process creating the file at the same moment is fine: an
    # empty file is an empty database.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _sqlite_engine(settings: Settings) -> Engine:
    create_private_sqlite_file(settings)
    engine = create_engine(
        settings.database_url,
        connect_args={"check_same_thread": False, "timeout": settings.sqlite_busy_timeout_s},
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
    )
    busy_ms = int(settings.sqlite_busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so that BEGIN is ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            f"PRAGMA busy_timeout={busy_ms}",
            "PRAGMA foreign_keys=ON",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Writers take the write lock up front: a deferred transaction that upgrades later
        # fails with SQLITE_BUSY at once instead of waiting its turn.
        if connection.get_execution_options().get(WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")

    return engine
