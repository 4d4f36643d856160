"""Owns how often Python's cycle collector runs while imports run in the process."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

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
