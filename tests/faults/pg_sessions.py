"""Another session's view of the service's PostgreSQL database: a lock held on the audit head,
and the service's own sessions counted."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool


@contextmanager
def holding_audit_head(database_url: str) -> Iterator[None]:
    """The audit head row locked by another session until the block ends: every writer of an
    audit event (every change) waits for it."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE"))
            try:
                yield
            finally:
                connection.rollback()
    finally:
        engine.dispose()


def service_sessions(database_url: str) -> tuple[int, int]:
    """(sessions of this database but this one, those of them waiting for a lock)."""
    engine = create_engine(database_url, poolclass=NullPool)
    name = make_url(database_url).database
    try:
        with engine.connect() as connection:
            total, waiting = connection.execute(
                text(
                    "SELECT count(*), count(*) FILTER (WHERE wait_event_type = 'Lock') "
                    "FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            ).one()
    finally:
        engine.dispose()
    return int(total), int(waiting)
