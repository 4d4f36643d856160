"""Owns reading from a streaming replica (`PREFCENTER_READ_DATABASE_URL`): which server a heavy
read goes to, and the wait that keeps a replica from answering with data older than the request.

The rule it keeps: an opt-out answered 200 is effective at once, also for a read served by a
replica. A request's reads therefore go to the replica only once it has replayed the primary's
WAL position taken at the request's first read (every commit acknowledged before the request
began lies at or before it: commits are synchronous, so their WAL was written). A replica that
does not get there within `read_replica_max_wait_ms`, is unreachable, or is no standby at all
(a promoted one, a primary named by mistake) is passed over for the primary: slower, never
stale. Each change of the replica's state is logged once, not each read it costs.
"""

from __future__ import annotations

import logging
import threading
import time
from enum import StrEnum

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from prefcenter import metrics
from prefcenter.engines import session_options
from prefcenter.settings import ConfigError, Settings

logger = logging.getLogger(__name__)

# The primary's current WAL write position: at or after the commit record of every
# transaction already acknowledged (synchronous_commit=on flushes it before the answer).
_PRIMARY_POSITION = text("SELECT pg_current_wal_lsn()::text")
# How far the replica's replay is behind a position, in bytes (<= 0: it has replayed it);
# NULL on a server that is not in recovery.
_BEHIND = text("SELECT pg_wal_lsn_diff(CAST(:lsn AS pg_lsn), pg_last_wal_replay_lsn())")
# Between two looks at the replay position: short at first (a replica is usually a few
# milliseconds behind), then no more than this.
_FIRST_PAUSE_S = 0.0005
_MAX_PAUSE_S = 0.01


class ReplicaState(StrEnum):
    SERVING = "serving"
    LAGGING = "lagging"
    DOWN = "down"
    NOT_A_STANDBY = "not_a_standby"


def replica_url(settings: Settings) -> str | None:
    """`PREFCENTER_READ_DATABASE_URL`, or None when unset; refused beside SQLite (a file has
    no replica) and for anything but PostgreSQL."""
    url = (settings.read_database_url or "").strip()
    if not url:
        return None
    if settings.is_sqlite or not url.startswith("postgresql"):
        raise ConfigError(
            "PREFCENTER_READ_DATABASE_URL names a PostgreSQL streaming replica of "
            "PREFCENTER_DATABASE_URL (postgresql+psycopg://…); it has no use with SQLite"
        )
    return url


class Replica:
    """The read replica of one process: its pool, its state, and the primary to fall back to."""

    def __init__(self, settings: Settings, url: str, primary: Engine) -> None:
        self.primary = primary
        self.engine = create_engine(
            url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_pool_size,
            pool_recycle=1800,
            connect_args={"options": session_options(settings)},
        )
        self.max_wait_s = settings.read_replica_max_wait_ms / 1000
        self.retry_s = settings.read_replica_retry_s
        self._lock = threading.Lock()
        self._state = ReplicaState.SERVING
        # Until then (time.monotonic()) reads go to the primary without trying the replica.
        self._down_until = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, primary: Engine) -> Replica | None:
        url = replica_url(settings)
        return None if url is None else cls(settings, url, primary)

    @property
    def state(self) -> ReplicaState:
        return self._state

    def position(self) -> ReadPosition:
        """A new request's position, taken on the primary at its first read."""
        return ReadPosition(self)

    def engine_for(self, position: ReadPosition) -> Engine:
        """The replica's engine once it has replayed `position` (waiting at most the
        configured time), else the primary's."""
        if time.monotonic() < self._down_until:
            return self._served(by_replica=False)
        lsn = position.lsn()
        try:
            state, behind = self._wait_for(lsn)
        except DBAPIError as exc:
            self._down_until = time.monotonic() + self.retry_s
            self._enter(ReplicaState.DOWN, f"{type(exc.orig).__name__}: {_first_line(exc.orig)}")
            return self._served(by_replica=False)
        self._enter(state, f"{behind} bytes of WAL behind" if behind is not None else "")
        return self._served(by_replica=state is ReplicaState.SERVING)

    def _wait_for(self, lsn: str) -> tuple[ReplicaState, int | None]:
        """Look at the replay position until it passes `lsn` or the wait is over."""
        deadline = time.monotonic() + self.max_wait_s
        pause = _FIRST_PAUSE_S
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            while True:
                behind = connection.execute(_BEHIND, {"lsn": lsn}).scalar_one()
                if behind is None:
                    return ReplicaState.NOT_A_STANDBY, None
                if behind <= 0:
                    return ReplicaState.SERVING, None
                left = deadline - time.monotonic()
                if left <= 0:
                    return ReplicaState.LAGGING, int(behind)
                time.sleep(min(pause, left))
                pause = min(pause * 2, _MAX_PAUSE_S)

    def _served(self, *, by_replica: bool) -> Engine:
        metrics.count_replica_read(by_replica=by_replica)
        return self.engine if by_replica else self.primary

    def _enter(self, state: ReplicaState, detail: str) -> None:
        """Log a change of state, once: a replica down for an hour is one line, not one per
        read. Never an address or a token: only the server's own error and figures."""
        with self._lock:
            previous, self._state = self._state, state
        if previous is state:
            return
        if state is ReplicaState.SERVING:
            logger.info("read replica caught up: heavy reads go to it again")
        elif state is ReplicaState.LAGGING:
            logger.warning(
                "read replica still %s after waiting %d ms: heavy reads go to the primary "
                "until it catches up",
                detail,
                round(self.max_wait_s * 1000),
            )
        elif state is ReplicaState.DOWN:
            logger.warning(
                "read replica unreachable (%s): heavy reads go to the primary; trying it "
                "again every %g s",
                detail,
                self.retry_s,
            )
        else:
            logger.warning(
                "PREFCENTER_READ_DATABASE_URL is not a standby in recovery (a primary, or a "
                "promoted replica): heavy reads go to the primary"
            )

    def dispose(self) -> None:
        self.engine.dispose()


class ReadPosition:
    """The primary's WAL position for one request, taken at its first read and kept for its
    later ones (a stream's chunks): a later position would only make them wait longer."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self._lsn: str | None = None

    def lsn(self) -> str:
        if self._lsn is None:
            with self.replica.primary.connect().execution_options(
                isolation_level="AUTOCOMMIT"
            ) as connection:
                self._lsn = str(connection.execute(_PRIMARY_POSITION).scalar_one())
        return self._lsn

    def engine(self) -> Engine:
        """Where this request's next read goes (see Replica.engine_for)."""
        return self.replica.engine_for(self)


def _first_line(error: BaseException | None) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else ""
