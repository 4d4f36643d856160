"""Owns how Python's cycle collector runs while bulk work keeps many objects alive.

Pausing its cyclic collections (`collections_paused`) while a bulk request makes its objects:
a batch of 1,000 consent changes makes some 20,000 that live until it is answered,
and the collector walked them again and again as it went (some 30 young collections a batch,
two or three of the middle generation, now and then a full one: 4–20 ms of a 120–250 ms
batch). Paused, it walks what is left once the batch is over, by which time most of it has
been freed by reference counting.

Process-wide, as the collector is: the pause lasts while any thread is inside
`collections_paused`, and leaves the collector as it found it (disabled stays disabled). A
thread that leaves while others are still inside collects the young generations itself, so
that overlapping batches do not keep their garbage cycles for as long as they overlap.

Spacing it (`spaced_collections`) is for work that lasts too long to pause it: an import.
Its youngest generation is collected every `IMPORT_THRESHOLD` allocations instead of 700."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _Pauses:
    """The threads inside `collections_paused`, and the collector's state when the first of
    them came in."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside = 0
        self.was_enabled = False


_pauses = _Pauses()


@contextmanager
def collections_paused() -> Iterator[None]:
    """No cyclic collection while the block runs (in any thread); the collector as it was
    once the last such block is over."""
    with _pauses.lock:
        if _pauses.inside == 0:
            _pauses.was_enabled = gc.isenabled()
            gc.disable()
        _pauses.inside += 1
    try:
        yield
    finally:
        with _pauses.lock:
            _pauses.inside -= 1
            others = _pauses.inside > 0
            enabled = _pauses.was_enabled
            if not others and enabled:
                gc.enable()
        if others and enabled:
            # Batches that overlap, one after the other, could keep the collector off for
            # good: each collects the young generations it leaves as it goes.
            gc.collect(1)


# Allocations between two collections of the youngest generation while an import runs (Python's
# default: 700). An import allocates a few dozen objects a row and keeps three batches of them
# alive; at the default, the collector's passes over them took a fifth of the import's own CPU
# (bench/imports.py). Its objects hold no cycles to wait for: reference counting frees them.
IMPORT_THRESHOLD = 100_000


class _Spacing:
    """The process's own thresholds, kept while at least one import runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._saved: tuple[int, int, int] = gc.get_threshold()

    def enter(self) -> None:
        with self._lock:
            if self._running == 0:
                self._saved = gc.get_threshold()
                first, second, third = self._saved
                gc.set_threshold(max(first, IMPORT_THRESHOLD), second, third)
            self._running += 1

    def leave(self) -> None:
        with self._lock:
            self._running -= 1
            if self._running == 0:
                gc.set_threshold(*self._saved)


_spacing = _Spacing()


@contextmanager
def spaced_collections() -> Iterator[None]:
    """Collect the youngest generation every `IMPORT_THRESHOLD` allocations (never more
    often than the process's own setting) until the block ends; the process's setting is
    back once the last import running in it is done."""
    _spacing.enter()
    try:
        yield
    finally:
        _spacing.leave()
