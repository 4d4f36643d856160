"""Owns running an outbox worker: in a thread of its own beside a server (`prefcenter serve`),
or until SIGTERM or SIGINT (`prefcenter worker`); both stop gracefully (the message being sent
is finished, the rest of the claim given back)."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading

from prefcenter.delivery.worker import OutboxWorker

logger = logging.getLogger(__name__)

# How long `BackgroundWorker.stop` waits for the message being sent.
STOP_TIMEOUT_S = 40.0


class BackgroundWorker:
    """An `OutboxWorker` in a thread with its own event loop, beside a server (`prefcenter
    serve`): started before it, stopped after it."""

    def __init__(self, worker: OutboxWorker) -> None:
        self.worker = worker
        self._thread = threading.Thread(target=self._main, name="outbox-worker", daemon=True)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self.worker.run(self._stop)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop claiming, finish the message being sent, give the rest back."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("outbox worker did not stop within %.0f s", timeout)


async def run_until_signalled(worker: OutboxWorker) -> None:
    """`prefcenter worker`: deliver until SIGTERM or SIGINT, then stop gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await worker.run(stop)
