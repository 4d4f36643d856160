"""Owns running uvicorn for `serve`: one server process, or a supervisor and `--workers`
server processes, each of which ends with status 0 once it has shut down gracefully on
SIGTERM, and a supervisor that names each one's exit status.

Light on purpose: a worker process imports this module to unpickle its configuration before
it answers the supervisor's health checks, which it must do within seconds of starting; the
application is imported afterwards, by the server."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import sys
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

logger = logging.getLogger("prefcenter.serve")

# uvicorn's status for a server that could not start (the app, the socket).
STARTUP_FAILURE = 3


class ServerConfig(uvicorn.Config):
    """uvicorn's configuration, and the place a server process is prepared before its server
    runs: `configure_logging` is what uvicorn calls first in each worker process it spawns."""

    def configure_logging(self) -> None:
        super().configure_logging()
        if multiprocessing.parent_process() is not None:
            _end_quietly_on_sigterm()


def _end_quietly_on_sigterm() -> None:
    """A uvicorn server handles SIGTERM itself while it runs (stop accepting, finish what is in
    flight, the application's shutdown) and afterwards raises it again against the handler it
    found when it started, which by default ends the process with -15. Found here instead: a
    KeyboardInterrupt, which uvicorn's worker process takes as the end it expects (status 0)."""
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class Supervisor(Multiprocess):
    """uvicorn's supervisor (it replaces a worker process that dies), which logs each worker
    process's exit status once all have stopped."""

    def join_all(self) -> None:
        super().join_all()
        for process in self.processes:
            logger.info("server process [%s] exited with status %s", process.pid, process.exitcode)

    @property
    def all_exited_0(self) -> bool:
        return all(process.exitcode == 0 for process in self.processes)


def run_server(app: str, **options: Any) -> bool:
    """Run the server until it is stopped: whether it, and each worker process, ended
    cleanly. (`uvicorn.run` without its reloader, with the processes above.)"""
    config = ServerConfig(app, **options)
    if config.workers > 1:
        supervisor = Supervisor(config, sockets=[config.bind_socket()])
        supervisor.run()
        return supervisor.all_exited_0
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
    return True
