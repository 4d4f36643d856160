"""Owns a server process's draining: on SIGTERM `/readyz` answers 503 at once, the process
keeps serving for the drain time (a load balancer's chance to notice), then the server stops
accepting and finishes what it has in hand (uvicorn, up to `shutdown_timeout_s`)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

logger = logging.getLogger(__name__)

_Handler = Callable[[int, FrameType | None], object]


class Drain:
    """Whether this process has been asked to stop. Set once, never cleared."""

    def __init__(self) -> None:
        self._started = threading.Event()

    @property
    def started(self) -> bool:
        return self._started.is_set()

    def start(self) -> None:
        self._started.set()


def drain_on_sigterm(drain: Drain, *, delay_s: float) -> Callable[[], None] | None:
    """Put a handler in front of the server's own SIGTERM handler, which uvicorn installs in
    each worker process before the application starts: mark the drain, then hand the signal on
    after `delay_s` (at once on a second SIGTERM). Returns the undo; None where this process
    cannot handle signals (not its main thread: an in-process test client) or no server
    handler is there to hand on to.

    In front of, not instead of: uvicorn's handler is what stops accepting, waits for the
    requests in flight and runs the application's shutdown.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    handed_on = signal.getsignal(signal.SIGTERM)
    if not callable(handed_on):
        return None
    server_handler: _Handler = handed_on
    timers: list[threading.Timer] = []

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if drain.started:
            for timer in timers:
                timer.cancel()
            server_handler(signum, frame)
            return
        drain.start()
        logger.info("SIGTERM: draining, /readyz answers 503; stopping in %.1f s", delay_s)
        if delay_s <= 0:
            server_handler(signum, frame)
            return
        # The server's handler only sets flags its main loop reads: safe from another thread.
        timer = threading.Timer(delay_s, server_handler, (signum, frame))
        timer.daemon = True
        timers.append(timer)
        timer.start()

    signal.signal(signal.SIGTERM, on_sigterm)

    def undo() -> None:
        for timer in timers:
            timer.cancel()
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, server_handler)

    return undo
