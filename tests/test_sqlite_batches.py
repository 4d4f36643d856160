"""SQLite's batched writes (prefcenter.sqlite_batches): the writes queued while the writer
thread is busy go in its next transaction together, each in its own savepoint, answered once
their one COMMIT has returned; a write that raises is undone alone, a transaction that fails
takes every write of it.

SQLite only: PostgreSQL's hot writes are single guarded statements (consent.ledger.api_lane)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from prefcenter import migrations
from prefcenter.db import Database
from prefcenter.driver import DriverCursor
from prefcenter.problems import ServiceUnavailable
from prefcenter.sqlite_batches import AfterCommit, BatchedWrites
from tests.support.harness import make_settings

# The keys whose write ran what follows its commit.
committed: list[str] = []


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    settings = make_settings(f"sqlite:///{tmp_path / 'batches.db'}", sqlite_busy_timeout_s=10)
    migrations.upgrade(settings)
    database = Database(settings)
    yield database
    database.dispose()


@pytest.fixture
def statements(database: Database) -> list[str]:
    """Every statement the database's connections run, in order."""
    run: list[str] = []

    @event.listens_for(database.engine, "connect")
    def _trace(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.set_trace_callback(run.append)

    return run


def _batches(database: Database) -> BatchedWrites:
    assert database.sqlite_batches is not None
    return database.sqlite_batches


def _add_topic(key: str, *, then_fail: bool = False) -> Any:
    def work(cursor: DriverCursor, after_commit: AfterCommit) -> str:
        cursor.execute(
            "INSERT INTO topic (key, name, kind, consent, double_opt_in, created_at, "
            "updated_at) VALUES (?, ?, 'marketing', 'opt_in', 0, '2026-01-01 00:00:00', "
            "'2026-01-01 00:00:00')",
            (key, key),
        )
        after_commit.append(lambda: committed.append(key))
        if then_fail:
            raise ValueError(key)
        return key

    return work


def _topics(database: Database) -> list[str]:
    with database.transaction(write=False) as session:
        return list(session.execute(text("SELECT key FROM topic ORDER BY key")).scalars())


async def _first_then_queued(database: Database, works: list[Any]) -> list[Any]:
    """A first write that holds the writer thread until `works` are all queued, so that they
    make the next batch together; the results of `works` (an exception for one that raised)."""
    holding, release = threading.Event(), threading.Event()

    def hold(cursor: DriverCursor, _: AfterCommit) -> None:
        holding.set()
        release.wait(10)

    first = asyncio.ensure_future(_batches(database).run(hold))
    assert await asyncio.to_thread(holding.wait, 10)
    queued = [asyncio.ensure_future(_batches(database).run(work)) for work in works]
    await asyncio.sleep(0)  # each has put its write on the queue
    release.set()
    await first
    return await asyncio.gather(*queued, return_exceptions=True)


def test_writes_queued_together_share_one_commit(database: Database, statements: list[str]) -> None:
    results = asyncio.run(
        _first_then_queued(database, [_add_topic(key) for key in ("a", "b", "c")])
    )
    written = [s for s in statements if s.startswith(("BEGIN", "INSERT", "COMMIT", "SAVE"))]
    assert results == ["a", "b", "c"]
    assert _topics(database) == ["a", "b", "c"]
    assert [s.split()[0] for s in written] == [
        # the first write, alone
        *("BEGIN", "SAVEPOINT", "COMMIT"),
        # the three queued while it ran: one transaction
        *("BEGIN", "SAVEPOINT", "INSERT", "SAVEPOINT", "INSERT", "SAVEPOINT", "INSERT"),
        "COMMIT",
    ]


def test_a_write_that_raises_is_undone_alone(database: Database) -> None:
    committed.clear()
    works = [_add_topic("a"), _add_topic("b", then_fail=True), _add_topic("c")]
    results = asyncio.run(_first_then_queued(database, works))
    assert results[0] == "a"
    assert isinstance(results[1], ValueError)
    assert results[2] == "c"
    assert _topics(database) == ["a", "c"]
    assert committed == ["a", "c"]  # what runs after the commit: only the kept writes'


def test_a_failed_transaction_takes_every_write_of_it(database: Database) -> None:
    """The driver's own error (not a write's unique row) is the transaction's: nothing of the
    batch is stored, each of its writes is answered 503 (its caller takes its other path)."""
    committed.clear()

    def broken(cursor: DriverCursor, _: AfterCommit) -> None:
        cursor.execute("INSERT INTO no_such_table VALUES (1)")

    results = asyncio.run(_first_then_queued(database, [_add_topic("a"), broken]))
    assert all(isinstance(result, ServiceUnavailable) for result in results)
    assert _topics(database) == []
    assert committed == []


def test_a_unique_row_is_the_writes_own(database: Database) -> None:
    works = [_add_topic("a"), _add_topic("a"), _add_topic("b")]
    results = asyncio.run(_first_then_queued(database, works))
    assert results[0] == "a"
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert results[2] == "b"
    assert _topics(database) == ["a", "b"]


def test_a_write_answered_is_committed(database: Database) -> None:
    """Read on another connection at once: the answer came after the COMMIT."""

    async def write_then_read() -> list[str]:
        await _batches(database).run(_add_topic("a"))
        path = database.settings.sqlite_path()
        assert path is not None
        with closing(sqlite3.connect(path)) as other:
            return [key for (key,) in other.execute("SELECT key FROM topic")]

    assert asyncio.run(write_then_read()) == ["a"]


def test_writes_after_stop_start_the_thread_again(database: Database) -> None:
    asyncio.run(_batches(database).run(_add_topic("a")))
    _batches(database).stop()
    asyncio.run(_batches(database).run(_add_topic("b")))
    assert _topics(database) == ["a", "b"]


class _StopDuringPut:
    """The writer's queue, whose first `put` is held until a `stop` from another thread has
    ended (or for a second): the stop then lands between a write's look at the thread and its
    put, where a thread stopped without seeing the write would leave it unanswered."""

    def __init__(self, batches: BatchedWrites) -> None:
        self.batches = batches
        self.queue = batches._queue
        self.held = False

    def put(self, item: Any) -> None:
        if not self.held:
            self.held = True
            stopper = threading.Thread(target=self.batches.stop)
            stopper.start()
            stopper.join(timeout=1)
        self.queue.put(item)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.queue, name)


def test_a_write_queued_while_the_thread_stops_is_answered(database: Database) -> None:
    batches = _batches(database)
    asyncio.run(batches.run(_add_topic("a")))  # the thread runs
    batches._queue = _StopDuringPut(batches)  # type: ignore[assignment]

    async def write_during_stop() -> Any:
        try:
            return await asyncio.wait_for(batches.run(_add_topic("b")), timeout=10)
        except ServiceUnavailable as refused:
            return refused  # refused by the stopping thread: answered too

    result = asyncio.run(write_during_stop())
    assert result == "b" or isinstance(result, ServiceUnavailable)
