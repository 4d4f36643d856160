"""`drain_on_sigterm`: SIGTERM marks the drain at once and reaches the server's own handler
after the drain time, or at once on a second SIGTERM."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from prefcenter.draining import Drain, drain_on_sigterm


class ServerHandler:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.calls.append(signum)


@pytest.fixture
def server_handler() -> Iterator[ServerHandler]:
    """Stands for uvicorn's handler, installed before the application starts."""
    handler = ServerHandler()
    previous = signal.signal(signal.SIGTERM, handler)
    yield handler
    signal.signal(signal.SIGTERM, previous)


def test_without_a_drain_time_the_server_is_told_at_once(server_handler: ServerHandler) -> None:
    drain = Drain()
    undo = drain_on_sigterm(drain, delay_s=0)
    assert undo is not None

    signal.raise_signal(signal.SIGTERM)

    assert drain.started
    assert server_handler.calls == [signal.SIGTERM]
    undo()
    assert signal.getsignal(signal.SIGTERM) is server_handler


def test_the_server_is_told_after_the_drain_time_or_on_a_second_sigterm(
    server_handler: ServerHandler,
) -> None:
    drain = Drain()
    undo = drain_on_sigterm(drain, delay_s=60)
    assert undo is not None

    signal.raise_signal(signal.SIGTERM)
    assert drain.started
    assert server_handler.calls == []  # still serving, /readyz 503

    signal.raise_signal(signal.SIGTERM)
    assert server_handler.calls == [signal.SIGTERM]
    undo()


def test_outside_the_main_thread_nothing_is_installed(server_handler: ServerHandler) -> None:
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(drain_on_sigterm(Drain(), delay_s=0)))
    thread.start()
    thread.join()

    assert results == [None]
    assert signal.getsignal(signal.SIGTERM) is server_handler
