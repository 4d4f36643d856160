"""Owns running an import's batches two at a time on PostgreSQL: batch N+1 stages, creates,
locks, reads, decides and merges on a connection of its own while batch N writes its events
and commits on another, so that the server's two halves of the work and the import's own
Python overlap instead of taking turns.

What stays as one batch at a time would have it:
- Batch N+1 commits only after batch N has committed, and only then takes the audit head, so
  the chain and the batches' `seq` follow the file; if N fails, N+1 is rolled back and the
  report is the one a one-at-a-time run gives (N failed, nothing after it).
- Batch N+1 reads no state that N writes: it starts once N has made all its writes but the
  events, and only if no address of N+1 is in N; otherwise it waits for N's commit first.
- Imports still never interleave their batches: the import holds the import lock
  (`ledger.bulk.import_lock`) for its whole run, on a connection of its own.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from sqlalchemy.exc import SQLAlchemyError

from prefcenter.consent.ledger.bulk import import_lock
from prefcenter.db import Database
from prefcenter.imports.apply import BatchContext, Tally, apply_batch
from prefcenter.imports.prepare import PreparedBatch
from prefcenter.problems import Problem


class _Cancelled(Exception):
    """The batch before this one did not commit: this one is rolled back."""


@dataclass(eq=False)
class InFlight:
    """One batch on its way: what its thread did, for the caller to report in file order."""

    number: int
    batch: PreparedBatch
    tally: Tally = field(default_factory=Tally)
    error: Problem | SQLAlchemyError | None = None
    # Set once the batch's writes but its events are made (or it failed or was cancelled).
    written: threading.Event = field(default_factory=threading.Event)
    # Set once the batch committed or rolled back; `committed` says which.
    done: threading.Event = field(default_factory=threading.Event)
    committed: bool = False
    # The caller's word on the batch before this one: it committed (True) or not (False).
    go: threading.Event = field(default_factory=threading.Event)
    may_commit: bool = False

    def allow(self, *, commit: bool) -> None:
        self.may_commit = commit
        self.go.set()


def run_two_at_a_time(
    database: Database,
    batches: Iterator[PreparedBatch],
    shared: BatchContext,
    record: Callable[[InFlight], bool],
) -> None:
    """Apply the batches, at most two at once, calling `record` for each in file order once
    it committed or failed (False: it failed, and the import stops there). An error raised
    by `batches` reaches the caller after the batch before it was recorded, unless that one
    failed (then the import stops as it would have, before reading on)."""
    locked = replace(shared, import_locked=True)
    with import_lock(database), ThreadPoolExecutor(2, thread_name_prefix="import-batch") as pool:
        # The batch in flight that is not recorded yet.
        pending: tuple[InFlight, Future[None]] | None = None
        try:
            for number in itertools.count(1):
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except Exception:
                    # The rows failed to read: the batch before them is recorded first, and
                    # if it failed the import stops there, as it would have before reading on.
                    last, pending = pending, None
                    if last is not None and not _finish(last, None, record):
                        return
                    raise
                current = InFlight(number, batch)
                if pending is None:
                    current.allow(commit=True)
                flight = (current, pool.submit(_apply, database, locked, current, _of(pending)))
                before, pending = pending, flight
                if before is not None and not _finish(before, current, record):
                    # The batch after it was told to roll back; its thread ends with it.
                    pending = None
                    return
        finally:
            if pending is not None:
                _finish(pending, None, record)


def _of(flight: tuple[InFlight, Future[None]] | None) -> InFlight | None:
    return None if flight is None else flight[0]


def _finish(
    flight: tuple[InFlight, Future[None]],
    after: InFlight | None,
    record: Callable[[InFlight], bool],
) -> bool:
    """Wait for a batch, record it (unless it was rolled back for the one before it), and
    tell the one after it whether it may commit."""
    current, started = flight
    ok = False
    try:
        started.result()
        if current.committed or current.error is not None:
            ok = record(current)
    finally:
        if after is not None:
            after.allow(commit=ok)
    return ok


def _wait_for_go(current: InFlight) -> None:
    current.go.wait()
    if not current.may_commit:
        raise _Cancelled


def _apply(
    database: Database, shared: BatchContext, current: InFlight, before: InFlight | None
) -> None:
    try:
        if before is not None:
            # Its state must be the one `before` leaves: wait for it to commit.
            overlaps = not before.batch.hashes.keys().isdisjoint(current.batch.hashes)
            (before.done if overlaps else before.written).wait()
        with database.transaction(write=True) as session:
            apply_batch(session, current.batch, shared, current.tally)
            current.written.set()
            _wait_for_go(current)
        current.committed = True
    except _Cancelled:
        pass
    except (Problem, SQLAlchemyError) as exc:
        current.error = exc
    finally:
        current.written.set()
        current.done.set()
