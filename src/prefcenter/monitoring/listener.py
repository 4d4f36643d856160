"""Owns the separate metrics listener (PREFCENTER_METRICS_LISTEN): `/metrics` without
authentication on an address of its own, e.g. one only the Prometheus server reaches. It runs
in `prefcenter serve`'s own process, beside the uvicorn workers, and reads their metrics from
the multiprocess directory."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

from prefcenter import metrics
from prefcenter.db import Database
from prefcenter.monitoring.state import DatabaseState
from prefcenter.settings import Settings

logger = logging.getLogger(__name__)


@contextmanager
def serve_metrics(settings: Settings) -> Iterator[None]:
    """What `prefcenter serve` needs for /metrics while it runs: a fresh multiprocess
    directory for the workers it starts and itself (they inherit it from the environment),
    and the separate listener if PREFCENTER_METRICS_LISTEN asks for one."""
    with metrics.fresh_multiprocess_dir(), metrics_listener(settings):
        yield


@contextmanager
def metrics_listener(settings: Settings) -> Iterator[WSGIServer | None]:
    """Serve the metrics on PREFCENTER_METRICS_LISTEN until the block ends (nothing when it
    is unset). A port that cannot be bound stops the start (OSError)."""
    address = settings.metrics_address()
    if address is None:
        yield None
        return
    host, port = address
    database = Database(settings)
    registry = metrics.scrape_registry(DatabaseState(database))
    server, thread = start_http_server(port, addr=host, registry=registry)
    logger.info("metrics on http://%s:%d/metrics", host, server.server_port)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        database.dispose()
