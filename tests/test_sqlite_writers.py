"""SQLite's writers queue for their turn (prefcenter.sqlite_writers) before `BEGIN IMMEDIATE`:
those of one process on a lock, the processes of one host on a file lock, instead of meeting
at SQLite's busy handler, which waits by sleeping. The wait is still bounded by
`PREFCENTER_SQLITE_BUSY_TIMEOUT_S`: past it, a 503 to retry.

SQLite only: PostgreSQL has no database-wide write lock (its writers wait on the rows they
share, under `lock_timeout`, as tests/test_concurrency.py shows on both engines)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
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


def test_writers_of_two_processes_take_turns(tmp_path: Path) -> None:
    """A process holding the host's turn (the file lock beside the database) makes this
    process's writer wait for it, then go, rather than fail at the busy handler."""
    path = tmp_path / "shared.db"
    settings = make_settings(f"sqlite:///{path}", sqlite_busy_timeout_s=5)
    migrations.upgrade(settings)
    database = Database(settings)
    holds_the_turn = (
        "import fcntl, os, time;"
        f"fd = os.open({str(path) + '.writers'!r}, os.O_RDWR | os.O_CREAT, 0o600);"
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(0.5)"
    )
    try:
        with subprocess.Popen(
            [sys.executable, "-c", holds_the_turn], stdout=subprocess.PIPE, text=True
        ) as holder:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "held"
            started = time.monotonic()
            _add_topic(database, "after-the-other")
            waited = time.monotonic() - started
        assert waited >= 0.3  # it waited for the other process's turn …
        assert _topics(database) == ["after-the-other"]  # … and then wrote
    finally:
        database.dispose()
