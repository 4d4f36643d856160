"""imports.prepare: batches are made one ahead in a thread of their own, handed over in order,
and the source's error is raised to the consumer where its item would have come (no
database)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from prefcenter.imports.prepare import ReadAhead


def test_items_come_in_order_and_the_source_runs_in_another_thread() -> None:
    threads: list[threading.Thread] = []

    def source() -> Iterator[int]:
        for i in range(50):
            threads.append(threading.current_thread())
            yield i

    with ReadAhead(source()) as items:
        assert list(items) == list(range(50))
    assert threading.current_thread() not in threads


def test_an_error_of_the_source_comes_after_the_items_before_it() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("disk went away")

    with ReadAhead(source()) as items:
        assert [next(items), next(items)] == [1, 2]
        with pytest.raises(OSError, match="disk went away"):
            next(items)


def test_leaving_early_stops_the_source_before_the_block_ends() -> None:
    made: list[int] = []

    def source() -> Iterator[int]:
        for i in range(1000):
            made.append(i)
            yield i

    with ReadAhead(source()) as items:
        assert next(items) == 0
        reader = items._thread
    assert not reader.is_alive()
    assert len(made) <= 4  # the item taken, one queued, one handed over while stopping
