"""Owns the turn of SQLite's writers: one write transaction at a time per database file,
queued here before `BEGIN IMMEDIATE` instead of at SQLite's busy handler.

SQLite's busy handler waits by sleeping 1, 2, 5, … up to 100 ms between tries, so writers
that meet at the write lock lose far more time than the lock is ever held (a write holds it
for a millisecond or two): `POST /v1/consents` at 8 connections had a p99 above a second.
Here the writers of one process queue on a lock, and the processes of one host (`serve
--workers N`) on an exclusive `flock` of a file beside the database (`<db>.writers`, mode
0600), tried every few hundred µs. Either wait is bounded by `PREFCENTER_SQLITE_BUSY_TIMEOUT_S`:
past it, a 503 to retry, as before. Writers that do not come through here (the CLI's own
engines, migrations) still meet the others at the busy handler, as before.

The file is not the database: closing a descriptor of the database file would drop SQLite's
own POSIX locks on it (engines.create_private_sqlite_file), and `flock` locks are apart from
those anyway. Its descriptor stays open for the life of the process.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from prefcenter.problems import ServiceUnavailable
from prefcenter.settings import Settings

logger = logging.getLogger(__name__)

_FIRST_PAUSE_S = 0.0002
_LONGEST_PAUSE_S = 0.002


class _Turn:
    """The lock of one database within this process, and the descriptor of its file lock
    (None for a database without a file)."""

    def __init__(self, path: Path | None) -> None:
        self.lock = threading.Lock()
        self.descriptor: int | None = None
        if path is not None:
            self.descriptor = os.open(
                f"{path}.writers", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )


_TURNS: dict[str, _Turn] = {}
_TURNS_GUARD = threading.Lock()


def _turn_of(settings: Settings) -> _Turn:
    with _TURNS_GUARD:
        turn = _TURNS.get(settings.database_url)
        if turn is None:
            turn = _TURNS[settings.database_url] = _Turn(settings.sqlite_path())
        return turn


def _busy(settings: Settings) -> ServiceUnavailable:
    logger.warning("SQLite write lock not had in %s s", settings.sqlite_busy_timeout_s)
    return ServiceUnavailable(
        "The database is busy or unreachable; nothing was changed. Retry shortly.",
        headers={"Retry-After": "1"},
    )


def _lock_file(descriptor: int, deadline: float) -> bool:
    pause = _FIRST_PAUSE_S
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, _LONGEST_PAUSE_S)
        else:
            return True


@contextlib.contextmanager
def writer_turn(settings: Settings) -> Iterator[None]:
    """Hold the database's write turn for the block: first this process's, then the host's."""
    turn = _turn_of(settings)
    deadline = time.monotonic() + settings.sqlite_busy_timeout_s
    if not turn.lock.acquire(timeout=settings.sqlite_busy_timeout_s):
        raise _busy(settings)
    try:
        if turn.descriptor is not None and not _lock_file(turn.descriptor, deadline):
            raise _busy(settings)
        try:
            yield
        finally:
            if turn.descriptor is not None:
                fcntl.flock(turn.descriptor, fcntl.LOCK_UN)
    finally:
        turn.lock.release()
