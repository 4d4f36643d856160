"""Owns the database: the UTC time column, the session slots, and the one transaction boundary
(the only place in the code base that commits). Engines are built in engines.py; heavy reads
may go to a read replica (replica.py)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
from sqlalchemy import Connection, DateTime, Engine, create_engine, text
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator
from sqlmodel import Session, SQLModel

from prefcenter import engines, metrics
from prefcenter.driver import DriverCursor
from prefcenter.engines import WRITE_OPTION
from prefcenter.problems import Conflict, ServiceUnavailable
from prefcenter.replica import ReadPosition, Replica
from prefcenter.settings import Settings
from prefcenter.sqlite_batches import BatchedWrites
from prefcenter.sqlite_writers import writer_turn
from prefcenter.storage_errors import ConnectionLost, StorageFull, is_disk_full

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Session.info key: the settings the session's Database was built from, for commit hooks
# (the audit chain needs its key there).
_SETTINGS_INFO = "prefcenter.settings"
# Request transactions open at once per process: below the 40 worker threads that FastAPI
# runs sync code in (anyio's default), see request_sessions._request_transaction.
_MAX_SESSIONS = 32

# Constraint names fixed by convention, identical on both engines, so later migrations can
# name what they alter.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """One column type for time: stored as UTC, always read back timezone-aware.

    SQLite keeps no zone, so a naive value there is UTC by construction; PostgreSQL uses
    `timestamptz`. A naive datetime handed in is a bug, not something to guess about.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class SessionSlots:
    """`async with` one of a process's session slots (a semaphore), counting the requests that
    had to wait for one: waits mean the pool is the bottleneck."""

    def __init__(self, slots: int) -> None:
        self._semaphore = anyio.Semaphore(slots)

    async def __aenter__(self) -> None:
        if self._semaphore.value > 0:
            await self._semaphore.acquire()
            return
        counted = metrics.instruments()
        counted.db_session_waits.inc()
        counted.db_sessions_waiting.inc()
        try:
            await self._semaphore.acquire()
        finally:
            counted.db_sessions_waiting.dec()

    async def __aexit__(self, *_: object) -> None:
        self._semaphore.release()


class Database:
    """The engine plus the transaction boundary. Services receive a session and never commit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = engines.make_engine(settings)
        metrics.watch_pool(self.engine)
        # Fewer than the worker threads and the pool (2 × db_pool_size), so that a request
        # holding a connection always finds a thread, and a key lookup a connection.
        slots = min(settings.db_pool_size, _MAX_SESSIONS)
        self.session_slots = SessionSlots(slots)
        # Taken before a session slot by API writes: a quarter of the slots (at least one) stay
        # for reads, so that writes stuck behind a lock (until the lock timeout) never leave
        # the reads waiting too.
        self.write_slots = anyio.Semaphore(max(1, slots - max(1, slots // 4)))
        self.replica = Replica.from_settings(settings, self.engine)
        # SQLite: the writer thread of the hot write paths (sqlite_batches).
        self.sqlite_batches = BatchedWrites(settings, self.engine) if settings.is_sqlite else None
        # Set on the copies `reads` hands out: where their read transactions go.
        self._read_position: ReadPosition | None = None

    def reads(self) -> Database:
        """This database for one request's heavy reads (the eligibility API, exports, audit
        queries, lookups): with a read replica, each read transaction goes to the replica once
        it has replayed the primary's WAL position taken at the request's first read, else to
        the primary (see replica.py). Writes still go to the primary. Without a replica: this
        database itself."""
        if self.replica is None:
            return self
        reads = copy.copy(self)
        reads._read_position = self.replica.position()
        return reads

    def _engine(self, *, write: bool) -> Engine:
        if write or self._read_position is None:
            return self.engine
        return self._read_position.engine()

    @contextmanager
    def transaction(
        self, *, write: bool, snapshot: bool = False, autocommit: bool = False
    ) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises.

        `snapshot=True` reads one consistent snapshot throughout (PostgreSQL REPEATABLE READ;
        a SQLite transaction always does), for reads that span many statements.
        `autocommit=True` (reads only) runs each statement on its own on PostgreSQL, without
        the BEGIN and COMMIT round trips: for a page built from independent lookups.

        Database failures become problems a client can act on: a lock that could not be had
        or a lost connection is a 503 (retry), a concurrent duplicate is a 409.
        """
        try:
            engine = self._engine(write=write)
            gate = writer_turn(self.settings) if write and self.settings.is_sqlite else None
            with (
                gate or nullcontext(),
                Session(engine, expire_on_commit=False, autoflush=True) as session,
            ):
                session.info[_SETTINGS_INFO] = self.settings
                if write:
                    session.connection(execution_options={WRITE_OPTION: True})
                elif autocommit and not self.settings.is_sqlite:
                    session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
                elif snapshot and not self.settings.is_sqlite:
                    session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
                try:
                    yield session
                    session.commit()
                except BaseException:
                    session.rollback()
                    raise
        except IntegrityError as exc:
            logger.info("integrity error, rolled back: %s", exc.orig)
            raise Conflict(
                "A concurrent request changed the same record; nothing was changed. Retry."
            ) from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                logger.warning("database connection lost, rolled back: %s", exc.orig)
                raise ConnectionLost(
                    "The database connection was lost; nothing was changed. Retry.",
                    headers={"Retry-After": "1"},
                ) from exc
            if is_disk_full(exc.orig):
                # The cause is the message: a traceback per refused write would add nothing.
                logger.error("the database's disk is full, rolled back: %s", exc.orig)  # noqa: TRY400
                raise StorageFull(
                    "The database's disk is full; nothing was changed. Retry once the operator "
                    "has freed space.",
                    headers={"Retry-After": "60"},
                ) from exc
            if isinstance(exc, OperationalError):
                logger.warning("database unavailable, rolled back: %s", exc.orig)
                raise ServiceUnavailable(
                    "The database is busy or unreachable; nothing was changed. Retry shortly.",
                    headers={"Retry-After": "1"},
                ) from exc
            raise

    async def run_in_transaction(
        self, work: Callable[[Session], T], *, write: bool, autocommit: bool = False
    ) -> T:
        """`work(session)` in one transaction, committed before this returns, in one worker
        thread: one hand-off from the event loop and back, where a `ReadSession` /
        `WriteSession` dependency costs three (enter, handler, exit). For hot, short requests
        (recipients' links); waits for a session slot first, like the dependencies.

        A connection found dead on its first use (the server restarted since it was pooled)
        is retried once on a fresh one. `work` must therefore be safe to run twice, as every
        recipient action is (the second run sees the first one's state, if it committed).
        """
        async with self.session_slots:
            return await anyio.to_thread.run_sync(self._run_with_retry, work, write, autocommit)

    async def run_api_write(self, work: Callable[[Session], T]) -> T:
        """`work(session)` in one write transaction, committed before this returns, in one
        worker thread: what a `WriteSession` dependency and a sync handler do in three
        hand-offs (enter, handler, exit), for the hot API writes. Waits for a write slot and
        a session slot first, like `WriteSession`. Never retried: a change is not safe to run
        twice (a lost connection is a 503 the client retries, with its Idempotency-Key)."""
        async with self.write_slots, self.session_slots:
            return await anyio.to_thread.run_sync(self._run_write, work)

    def _run_write(self, work: Callable[[Session], T]) -> T:
        with self.transaction(write=True) as session:
            return work(session)

    def _run_with_retry(self, work: Callable[[Session], T], write: bool, autocommit: bool) -> T:
        try:
            with self.transaction(write=write, autocommit=autocommit) as session:
                return work(session)
        except ConnectionLost:
            logger.info("database connection lost; retrying the transaction once")
        with self.transaction(write=write, autocommit=autocommit) as session:
            return work(session)

    async def run_on_connection(self, work: Callable[[DriverCursor], T]) -> T:
        """`work(cursor)` on a pooled connection in autocommit mode, each statement its own
        transaction, in one worker thread: for the hottest paths, whose every statement
        stands alone (a page's one read; an opt-out's read and its one guarded write,
        consent.ledger.lane). No ORM and no BEGIN/COMMIT round trips.

        The cursor is the driver's own: SQL in its parameter style (`driver_sql`). A failed
        connection, or a busy one, raises `ConnectionLost` (503) after dropping it from the
        pool; the caller may then take its ordinary path, which retries.
        """
        async with self.session_slots:
            return await anyio.to_thread.run_sync(self.on_connection, work)

    async def run_write_on_connection(self, work: Callable[[DriverCursor], T]) -> T:
        """`run_on_connection` for an API write: waits for a write slot first, like
        `run_api_write`, so that writes stuck behind a lock leave slots for the reads."""
        async with self.write_slots, self.session_slots:
            return await anyio.to_thread.run_sync(self.on_connection, work)

    def on_connection(self, work: Callable[[DriverCursor], T]) -> T:
        """`run_on_connection` in the calling thread."""
        try:
            pooled = self._engine(write=False).raw_connection()
        except (self.engine.dialect.loaded_dbapi.OperationalError, OperationalError) as exc:
            # No connection to be had (the server is down or restarting); the pool raises the
            # driver's own error here, unwrapped.
            logger.warning("database unreachable on the direct path: %s", exc)
            raise ConnectionLost(
                "The database is unreachable; nothing was changed. Retry.",
                headers={"Retry-After": "1"},
            ) from exc
        driver: Any = pooled.driver_connection
        postgres = not self.settings.is_sqlite  # SQLite's connections are in autocommit already
        try:
            if postgres:
                driver.autocommit = True
            cursor: DriverCursor = driver.cursor()
            try:
                result = work(cursor)
            finally:
                cursor.close()
            if postgres:
                # Back to what the pool hands to sessions.
                driver.autocommit = False
        except BaseException as exc:
            # Whatever state it is in (autocommit, a failed statement), it is not reused.
            pooled.invalidate()
            if isinstance(exc, self.engine.dialect.loaded_dbapi.OperationalError):
                logger.warning("database connection failed on the direct path: %s", exc)
                raise ConnectionLost(
                    "The database connection was lost or busy; nothing was changed. Retry.",
                    headers={"Retry-After": "1"},
                ) from exc
            raise
        finally:
            pooled.close()
        return result

    def dispose(self) -> None:
        if self.sqlite_batches is not None:
            self.sqlite_batches.stop()
        self.engine.dispose()
        if self.replica is not None:
            self.replica.dispose()


def settings_of_session(session: OrmSession) -> Settings:
    """The settings of the Database that opened this session (see Database.transaction)."""
    settings: Settings | None = session.info.get(_SETTINGS_INFO)
    if settings is None:
        raise RuntimeError("session not opened by Database.transaction")
    return settings


# Any fixed number: held while migrating, so that hosts starting together migrate one at a time.
_MIGRATION_LOCK_ID = 0x70726566  # "pref"


@contextmanager
def migration_connection(settings: Settings) -> Iterator[Connection]:
    """A PostgreSQL connection holding the migration advisory lock; what the block did is
    committed when it ends, and the lock released either way."""
    engine = create_engine(settings.database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
            connection.commit()
            try:
                yield connection
                connection.commit()
            finally:
                connection.rollback()
                connection.execute(
                    text("SELECT pg_advisory_unlock(:id)"), {"id": _MIGRATION_LOCK_ID}
                )
                connection.commit()
    finally:
        engine.dispose()
