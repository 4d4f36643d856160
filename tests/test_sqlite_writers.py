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
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from prefcenter import migrations
from prefcenter.db import Database
from prefcenter.problems import ServiceUnavailable
from tests.support.harness import make_settings


@pytest.fixture
def database(tmp_path: Path) -> Database:
    settings = make_settings(f"sqlite:///{tmp_path / 'writers.db'}", sqlite_busy_timeout_s=0.3)
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


def test_writers_in_one_process_take_turns_without_failing(tmp_path: Path) -> None:
    """8 threads of 10 writes, each holding the write lock a few ms, with SQLite's own busy
    handler switched off (`busy_timeout=0`: a writer that meets another at `BEGIN IMMEDIATE`
    fails at once, a 503): they never meet there, since they queue for their turn first
    (whatever the machine's load: the turn itself may be waited for 10 s)."""
    settings = make_settings(f"sqlite:///{tmp_path / 'turns.db'}", sqlite_busy_timeout_s=10)
    migrations.upgrade(settings)
    database = Database(settings)

    @event.listens_for(database.engine, "connect")
    def _no_busy_handler(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout=0")

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
    try:
        assert failures == []
        assert len(_topics(database)) == 80
    finally:
        database.dispose()


def test_writers_of_two_processes_take_turns(tmp_path: Path) -> None:
    """A process holding the host's turn (the file lock beside the database) makes this
    process's writer wait for it, then go, rather than fail at the busy handler."""
    path = tmp_path / "shared.db"
    settings = make_settings(f"sqlite:///{path}", sqlite_busy_timeout_s=30)
    migrations.upgrade(settings)
    database = Database(settings)
    # Holds the turn until told to let go (a line on its stdin).
    holds_the_turn = (
        "import fcntl, os, sys;"
        f"fd = os.open({str(path) + '.writers'!r}, os.O_RDWR | os.O_CREAT, 0o600);"
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.readline()"
    )
    writer = threading.Thread(target=_add_topic, args=(database, "after-the-other"))
    try:
        with subprocess.Popen(
            [sys.executable, "-c", holds_the_turn],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as holder:
            assert holder.stdin is not None
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "held"
            writer.start()
            writer.join(0.5)
            assert writer.is_alive()  # it waits for the other process's turn …
            assert _topics(database) == []
            holder.stdin.write("go\n")
            holder.stdin.flush()
        writer.join(30)
        assert not writer.is_alive()
        assert _topics(database) == ["after-the-other"]  # … and then writes
    finally:
        database.dispose()
