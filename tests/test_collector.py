"""collector: the garbage collector paused while bulk work runs, and left as it was found."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from prefcenter.collector import collections_paused


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_paused_inside_and_enabled_again_after() -> None:
    gc.enable()
    with collections_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled() -> None:
    gc.disable()
    with collections_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_enabled_again_when_the_block_fails() -> None:
    gc.enable()
    with pytest.raises(RuntimeError), collections_paused():
        raise RuntimeError("the batch failed")
    assert gc.isenabled()


@contextmanager
def _another_thread_inside() -> Iterator[None]:
    """Another thread stays inside `collections_paused` until the block ends."""
    inside = threading.Event()
    leave = threading.Event()

    def other() -> None:
        with collections_paused():
            inside.set()
            leave.wait(5)

    thread = threading.Thread(target=other)
    thread.start()
    assert inside.wait(5)
    try:
        yield
    finally:
        leave.set()
        thread.join(5)


def test_stays_paused_until_the_last_thread_is_out() -> None:
    gc.enable()
    with _another_thread_inside():
        with collections_paused():
            pass
        assert not gc.isenabled()  # the other thread is still inside
    assert gc.isenabled()


def test_leaving_while_another_thread_is_inside_collects_the_young_generations() -> None:
    gc.enable()
    collected: list[int] = []

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            collected.append(info["generation"])

    with _another_thread_inside():
        gc.callbacks.append(record)
        try:
            with collections_paused():
                pass
        finally:
            gc.callbacks.remove(record)
    assert collected == [1]
