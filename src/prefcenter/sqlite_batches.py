"""Owns SQLite's batched writes: one thread per database and process that runs the queued
writes of a hot path (consent.change_lane's `POST /v1/consents`) in the database's write turn,
as many as are queued at once in one transaction, each in its own savepoint, with one COMMIT.

Why: on SQLite every write transaction passes through one lock, and each pays its COMMIT
(an `fdatasync` of the WAL with synchronous=FULL), a worker-thread hand-off each way and a
connection from the pool. One writer thread that takes what is queued pays each of these once
a batch; the answers go back to the event loop in one call. It also reads the state a write
is decided on inside the write transaction, so there is nothing to read again.

What stays as before: each write is whole or absent (its savepoint is released, or rolled
back when it raises); nothing is answered before the COMMIT that made it durable returns; a
write that fails alone fails alone (its caller gets its exception); a failure of the
transaction itself (a busy turn, the driver's error, COMMIT's) reaches every write of the
batch, none of which is then stored.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from prefcenter.driver import DriverCursor
from prefcenter.problems import ServiceUnavailable
from prefcenter.settings import Settings
from prefcenter.sqlite_writers import writer_turn
from prefcenter.storage_errors import ConnectionLost

logger = logging.getLogger(__name__)

T = TypeVar("T")

# At most this many writes a transaction: the turn is not held long for the writers of other
# paths (a write of this lane takes well under a millisecond).
MAX_BATCH = 64

AfterCommit = list[Callable[[], None]]
# A write: given the cursor, inside the batch's transaction, and the list of what to run once
# it is committed (metrics), returns its result.
Work = Callable[[DriverCursor, AfterCommit], T]


@dataclass(slots=True)
class _Queued(Generic[T]):
    work: Work[T]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]
    after_commit: AfterCommit = field(default_factory=list)
    result: Any = None
    error: BaseException | None = None


_STOP = object()


class BatchedWrites:
    """The writer thread of one database (started at the first write, stopped by `stop`)."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()

    async def run(self, work: Work[T]) -> T:
        """`work` run in the next batch; its result once the batch is committed. Raises what
        `work` raised (nothing of it stored), or `ServiceUnavailable` when the batch's
        transaction failed (nothing of it stored)."""
        loop = asyncio.get_running_loop()
        queued: _Queued[T] = _Queued(work, loop, loop.create_future())
        # The check and the put under the guard `stop` takes too: a write is queued either
        # before the stop (the thread runs it or refuses it) or after it, for a new thread;
        # never after a stopped thread's last look at the queue, where nobody would answer it.
        with self._guard:
            if self._thread is None or not self._thread.is_alive():
                thread = threading.Thread(
                    target=self._serve, name="prefcenter-sqlite-batches", daemon=True
                )
                thread.start()
                self._thread = thread
            self._queue.put(queued)
        return await queued.future

    def stop(self) -> None:
        """Let the thread finish the batch it runs, then end (writes queued after it are
        answered 503)."""
        with self._guard:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None:
            thread.join(timeout=self.settings.sqlite_busy_timeout_s + 5)

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                self._refuse_queued()
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                batch.append(more)
            try:
                self._write(batch)
            except Exception as exc:  # a bug here must not stop the thread all writes wait on
                logger.exception("SQLite batch of %d writes failed", len(batch))
                _fail(batch, exc)
            _answer(batch)
            if stop:
                self._refuse_queued()
                return

    def _refuse_queued(self) -> None:
        refused = []
        while True:
            try:
                queued = self._queue.get_nowait()
            except queue.Empty:
                break
            if queued is not _STOP:
                queued.error = _unavailable()
                refused.append(queued)
        _answer(refused)

    def _write(self, batch: list[_Queued[Any]]) -> None:
        try:
            pooled = self.engine.raw_connection()
        except (sqlite3.Error, DBAPIError) as exc:
            logger.warning("SQLite connection not had for a batch: %s", exc)
            _fail(batch, _unavailable())
            return
        driver: Any = pooled.driver_connection
        try:
            cursor: DriverCursor = driver.cursor()
            try:
                with writer_turn(self.settings):
                    _transaction(cursor, batch)
            finally:
                cursor.close()
        except ServiceUnavailable as exc:
            _fail(batch, exc)  # the turn not had in time: nothing was begun
        except sqlite3.Error as exc:
            # The transaction as a whole failed (COMMIT's error, a lost file): nothing of the
            # batch is stored, and the connection is not reused.
            logger.warning("SQLite batch of %d writes failed: %s", len(batch), exc)
            pooled.invalidate()
            _fail(batch, _unavailable())
        finally:
            pooled.close()


def _transaction(cursor: DriverCursor, batch: list[_Queued[Any]]) -> None:
    """The batch in one transaction, each write in its own savepoint. Raises the driver's
    errors that are the transaction's (not a write's unique row), nothing of it kept."""
    cursor.execute("BEGIN IMMEDIATE")
    try:
        for queued in batch:
            cursor.execute("SAVEPOINT write")
            try:
                queued.result = queued.work(cursor, queued.after_commit)
            except sqlite3.IntegrityError as exc:
                # This write's own (a unique row it could not know of): for its caller.
                _undo(cursor, queued, exc)
            except sqlite3.Error:
                raise  # the transaction's: the whole batch goes
            except Exception as exc:  # noqa: BLE001  (for its own caller, the others go on)
                _undo(cursor, queued, exc)
            cursor.execute("RELEASE write")
        cursor.execute("COMMIT")
    except BaseException:
        with suppress(sqlite3.Error):
            cursor.execute("ROLLBACK")  # before the turn passes on (the error may be COMMIT's)
        raise


def _undo(cursor: DriverCursor, queued: _Queued[Any], error: Exception) -> None:
    cursor.execute("ROLLBACK TO write")
    queued.error = error
    queued.after_commit.clear()


def _unavailable() -> ConnectionLost:
    return ConnectionLost(
        "The database is busy or unreachable; nothing was changed. Retry shortly.",
        headers={"Retry-After": "1"},
    )


def _fail(batch: list[_Queued[Any]], error: BaseException) -> None:
    for queued in batch:
        queued.error = error
        queued.after_commit.clear()


def _answer(batch: list[_Queued[Any]]) -> None:
    """What each committed write runs after its commit, then each write's result or error to
    its future, in one call per event loop."""
    for queued in batch:
        if queued.error is None:
            for hook in queued.after_commit:
                try:
                    hook()
                except Exception:
                    logger.exception("after the commit of a SQLite batch")
    by_loop: dict[asyncio.AbstractEventLoop, list[_Queued[Any]]] = {}
    for queued in batch:
        by_loop.setdefault(queued.loop, []).append(queued)
    for loop, settled in by_loop.items():
        with suppress(RuntimeError):  # a loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(_settle, settled)


def _settle(batch: list[_Queued[Any]]) -> None:
    for queued in batch:
        if queued.future.done():
            continue  # its request was cancelled
        if queued.error is not None:
            queued.future.set_exception(queued.error)
        else:
            queued.future.set_result(queued.result)
