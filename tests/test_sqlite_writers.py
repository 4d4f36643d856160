"""SQLite's writers in one process queue on the process's own lock (db._sqlite_writer) before
`BEGIN IMMEDIATE`, instead of meeting at SQLite's busy handler, which waits by sleeping. The
wait is still bounded by `PREFCENTER_SQLITE_BUSY_TIMEOUT_S`: past it, a 503 to retry.

SQLite only: PostgreSQL has no database-wide write lock (its writers wait on the rows they
share, under `lock_timeout`, as tests/test_concurrency.py shows on both engines)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from prefcenter import migrations
from prefcenter.db import Database
from prefcenter.problems import ServiceUnavailable
from tests.support.harness import make_settings


@pytest.fixture
def database(tmp_path: Path) -> Database:
    settings = make_settings(f"sqlite:///{tmp_path / 'writers.db'}", sqlite_busy_timeout_s=0.6)
    migrations.upgrade(settings)
    return Database(settings)


def _topics(database: Database) -> list[str]:
    with database.transaction(write=False) as session:
        return list(session.execute(text("SELECT key FROM topic ORDER BY key")).scalars())


def _add_topic(database: Database, key: str) -> None:
    with database.transaction(write=True) as session:
        session.execute(
            text(
                "INSERT INTO topic (key, name, kind, consent, double_opt_in, created_at, "
                "updated_at) VALUES (:key, :key, 'marketing', 'opt_in', 0, "
                "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            ),
            {"key": key},
        )


def test_a_writer_that_waits_past_the_busy_timeout_gets_a_503(database: Database) -> None:
    holding, release = threading.Event(), threading.Event()

    def hold_the_write_lock() -> None:
        with database.transaction(write=True):
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    try:
        assert holding.wait(10)
        with pytest.raises(ServiceUnavailable) as refused:
            _add_topic(database, "late")
        assert refused.value.status == 503
        assert refused.value.headers == {"Retry-After": "1"}
    finally:
        release.set()
        holder.join()
    assert _topics(database) == []


def test_writers_in_one_process_take_turns_without_failing(database: Database) -> None:
    """Each writer holds the write lock a few ms; 8 threads of 10 writes each would, at
    SQLite's busy handler, have some writer sleep past the 0.6 s timeout; queued, none does."""
    failures: list[BaseException] = []

    def write(thread: int) -> None:
        for n in range(10):
            try:
                with database.transaction(write=True) as session:
                    session.execute(
                        text(
                            "INSERT INTO topic (key, name, kind, consent, double_opt_in, "
                            "created_at, updated_at) VALUES (:key, :key, 'marketing', "
                            "'opt_in', 0, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
                        ),
                        {"key": f"t{thread}-{n}"},
                    )
                    threading.Event().wait(0.003)
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(_topics(database)) == 80
