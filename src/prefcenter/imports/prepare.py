"""Owns preparing an import's batches: everything about a batch that does not depend on the
database's state (reading and parsing its rows, the keyed hash of each address, the new
contacts' public ids, the event ids, the evidence documents and their digests), made in a
thread of its own one batch ahead, while the server writes the batch before it.

The server's waits release the GIL, so the next batch is prepared in the time the import
would otherwise only wait. The decisions, which depend on the state, stay in imports.apply.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.schemas import new_event_ids
from prefcenter.consent.ledger.bulk import StagedAddress
from prefcenter.consent.ledger.bulk_events import BulkEvents
from prefcenter.contacts.service import new_public_ids
from prefcenter.imports.formats import BrokenRow, ImportRow, Row

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    rows: list[Row]  # the batch as read, in file order
    good: list[ImportRow]  # its rows that parsed, in file order
    broken: list[BrokenRow]
    # Each distinct address of the good rows (its first form as given), with its keyed hash
    # and the public id of its contact should the batch create it.
    addresses: list[StagedAddress]
    hashes: dict[str, str]  # by normalised address
    event_ids: list[str]  # one per good row, used if the row is applied
    # One per good row: its event's evidence document and digest (BulkEvents.document).
    documents: list[tuple[bytes, str]]


def evidence_added(row: ImportRow) -> dict[str, Any]:
    """What a row's event adds to the import's evidence."""
    added: dict[str, Any] = {"line": row.line}
    if row.evidence is not None:
        added["row_evidence"] = row.evidence
    return added


def prepare_batch(rows: list[Row], *, keys: AuditKeys, events: BulkEvents) -> PreparedBatch:
    good: list[ImportRow] = []
    broken: list[BrokenRow] = []
    for row in rows:
        if isinstance(row, BrokenRow):
            broken.append(row)
        else:
            good.append(row)
    given: dict[str, str] = {}
    for row in good:
        given.setdefault(row.address.normalised, row.address.given)
    hashes = {address: keys.address_hash(address) for address in given}
    public_ids = new_public_ids(len(given))
    return PreparedBatch(
        rows=rows,
        good=good,
        broken=broken,
        addresses=[
            StagedAddress(address, first, hashes[address], public_id)
            for (address, first), public_id in zip(given.items(), public_ids, strict=True)
        ],
        hashes=hashes,
        event_ids=new_event_ids(len(good)),
        documents=[events.document(evidence_added(row)) for row in good],
    )


def prepared_batches(
    rows: Iterator[Row], size: int, *, keys: AuditKeys, events: BulkEvents
) -> Iterator[PreparedBatch]:
    while batch := list(itertools.islice(rows, size)):
        yield prepare_batch(batch, keys=keys, events=events)


_END = object()


class ReadAhead(Generic[T]):
    """The items of `source`, made by a thread of its own up to `depth` items ahead of the
    consumer. An exception of the source is raised to the consumer where the item would have
    come. Leaving the `with` block stops the thread (waiting for the item it is making) before
    the source's file may be closed."""

    def __init__(self, source: Iterator[T], *, depth: int = 1) -> None:
        self._source = source
        self._queue: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._produce, name="import-prepare", daemon=True)

    def __enter__(self) -> ReadAhead[T]:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        while self._thread.is_alive():
            # Unblock a thread waiting to hand over an item nobody will take.
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._thread.join()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item, error = self._queue.get()
        if item is _END:
            self._done = True
            if error is not None:
                raise error
            raise StopIteration
        result: T = item
        return result

    def _produce(self) -> None:
        try:
            for item in self._source:
                self._queue.put((item, None))
                if self._stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001  (handed to the consumer, raised there)
            self._queue.put((_END, exc))
            return
        self._queue.put((_END, None))
