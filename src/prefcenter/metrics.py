"""Owns the service's Prometheus metrics: what each process counts, and the text a scrape gets,
summed over every process of one `prefcenter serve` (prometheus_client's multiprocess mode).

prometheus_client decides when a value is created whether it lives in this process's memory or
in a file of `PROMETHEUS_MULTIPROC_DIR`, which every process of a server shares. The metrics are
therefore built on first use (`instruments()`), and `use_multiprocess_dir` switches the
process over before any is: the uvicorn workers are spawned with the directory in their
environment, but `serve`'s own process (the outbox worker, the separate metrics listener) was
running before it chose one.

Labels are bounded by construction: a route template, never a path (a path holds tokens); a
known method; a consent change's channel or actor kind, never an API client's own source name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
# Requests no route matched: one label for all of them, whatever path they asked for.
UNMATCHED_ROUTE = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# From a page's one read (a few ms) to an import or a deep verify (minutes).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
# The consent change source counted as a one-click opt-out (preference_center.service.Channel).
ONE_CLICK_SOURCE = "one_click"
# Session.info key: what a transaction counts once it has committed.
_AFTER_COMMIT = "prefcenter.metrics.after_commit"


@dataclass(frozen=True, slots=True)
class Instruments:
    """Every metric a process records itself. The database's state (audit head, outbox) is
    read at scrape time instead (monitoring.state)."""

    registry: CollectorRegistry  # this process's metrics alone (no multiprocess directory)
    requests: Counter
    request_seconds: Histogram
    consent_changes: Counter
    one_click_optouts: Counter
    eligibility_addresses: Counter
    audit_verify_time: Gauge
    audit_verify_failed: Gauge
    db_connections_in_use: Gauge
    db_session_waits: Counter
    db_sessions_waiting: Gauge
    db_replica_reads: Counter
    outbox_attempts: Counter


@cache
def instruments() -> Instruments:
    """This process's metrics, built on first use (see the module)."""
    # No `_created` series: the multiprocess mode has none, so neither does one process.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    return Instruments(
        registry=registry,
        requests=Counter(
            "prefcenter_http_requests",
            "HTTP requests answered, by route template and status.",
            ["method", "route", "status"],
            registry=registry,
        ),
        request_seconds=Histogram(
            "prefcenter_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        consent_changes=Counter(
            "prefcenter_consent_changes",
            "Consent changes recorded (committed), by source (the recipient's channel, or the "
            "actor kind) and outcome (applied, unchanged, superseded).",
            ["source", "outcome"],
            registry=registry,
        ),
        one_click_optouts=Counter(
            "prefcenter_one_click_optouts",
            "RFC 8058 one-click opt-outs recorded (committed), by outcome.",
            ["outcome"],
            registry=registry,
        ),
        eligibility_addresses=Counter(
            "prefcenter_eligibility_addresses",
            "Addresses answered by the eligibility API, by endpoint (batch or stream).",
            ["endpoint"],
            registry=registry,
        ),
        audit_verify_time=Gauge(
            "prefcenter_audit_last_verify_timestamp_seconds",
            "When the audit chain was last verified by this server (Unix time).",
            registry=registry,
            multiprocess_mode="mostrecent",
        ),
        audit_verify_failed=Gauge(
            # Not `_ok`: before the first verify it would read 0, a failure to alert on.
            "prefcenter_audit_last_verify_failed",
            "1 if the last verification of the audit chain failed, 0 if it passed or none ran.",
            registry=registry,
            multiprocess_mode="mostrecent",
        ),
        db_connections_in_use=Gauge(
            "prefcenter_db_connections_in_use",
            "Database connections checked out of the pools of the live processes.",
            registry=registry,
            multiprocess_mode="livesum",
        ),
        db_session_waits=Counter(
            "prefcenter_db_session_waits",
            "Requests that had to wait for a free database session slot.",
            registry=registry,
        ),
        db_sessions_waiting=Gauge(
            "prefcenter_db_sessions_waiting",
            "Requests waiting for a database session slot now.",
            registry=registry,
            multiprocess_mode="livesum",
        ),
        db_replica_reads=Counter(
            "prefcenter_db_replica_reads",
            "Heavy read transactions with a read replica configured, by the server that served "
            "them (replica, or primary when the replica lagged past the wait or was down).",
            ["served_by"],
            registry=registry,
        ),
        outbox_attempts=Counter(
            "prefcenter_outbox_attempts",
            "Outbox delivery attempts recorded by this server's or worker's outbox workers, by "
            "kind (mail, webhook) and outcome (sent, retry, failed, cancelled, released: "
            "claimed, then given back untried).",
            ["kind", "outcome"],
            registry=registry,
        ),
    )


def use_multiprocess_dir(path: Path) -> None:
    """Make this process, and every process it starts from now on, keep its values in files
    of `path` (a fresh, private directory: files left from an earlier run would be summed in).
    """
    os.environ[MULTIPROCESS_DIR_ENV] = str(path)
    # prometheus_client chose where values live when it was imported; choose again.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    instruments.cache_clear()


@contextmanager
def fresh_multiprocess_dir() -> Iterator[Path]:
    """A new private directory (mode 0700) for this process and those it starts, removed at
    the end: every `serve` starts its counts from zero, and no other user reads them."""
    path = Path(tempfile.mkdtemp(prefix="prefcenter-metrics-"))
    use_multiprocess_dir(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROCESS_DIR_ENV) or None


def process_exited(pid: int) -> None:
    """Drop a process's live gauges (connections in use, waits) from the sums."""
    path = multiprocess_dir()
    if path is not None:
        mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


class _Sum(Collector):
    def __init__(self, collectors: Iterable[Collector]) -> None:
        self.collectors = tuple(collectors)

    def collect(self) -> Iterable[Any]:
        for collector in self.collectors:
            yield from collector.collect()


def scrape_registry(*extra: Collector) -> CollectorRegistry:
    """A registry of what a scrape reports: every process's metrics (or this process's, when
    there is no multiprocess directory) and `extra` collectors, e.g. the database's state."""
    registry = CollectorRegistry()
    path = multiprocess_dir()
    if path is not None:
        MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
        sources: list[Collector] = []
    else:
        sources = [instruments().registry]
    registry.register(_Sum([*sources, *extra]))
    return registry


def exposition(*extra: Collector) -> bytes:
    """The Prometheus text of a scrape (see scrape_registry)."""
    return generate_latest(scrape_registry(*extra))


def count_request(method: str, route: str, status: int, seconds: float) -> None:
    metrics = instruments()
    method = method if method in METHODS else "other"
    metrics.requests.labels(method, route, str(status)).inc()
    metrics.request_seconds.labels(method, route).observe(seconds)


def count_consent_change(
    session: Session | None, *, source: str, outcome: str, count: int = 1
) -> None:
    """Count `count` consent changes once their transaction commits (None: it already has).
    `source` must come from a fixed set (see the module)."""

    def add() -> None:
        metrics = instruments()
        metrics.consent_changes.labels(source, outcome).inc(count)
        if source == ONE_CLICK_SOURCE:
            metrics.one_click_optouts.labels(outcome).inc(count)

    if session is None:
        add()
    else:
        session.info.setdefault(_AFTER_COMMIT, []).append(add)


def count_eligibility_addresses(endpoint: str, count: int) -> None:
    instruments().eligibility_addresses.labels(endpoint).inc(count)


def count_replica_read(*, by_replica: bool) -> None:
    instruments().db_replica_reads.labels("replica" if by_replica else "primary").inc()


def count_outbox_round(
    kind: str, *, sent: int, retried: int, failed: int, cancelled: int, released: int
) -> None:
    """Count what an outbox round recorded (once its transaction has committed)."""
    counter = instruments().outbox_attempts
    outcomes = {
        "sent": sent,
        "retry": retried,
        "failed": failed,
        "cancelled": cancelled,
        "released": released,
    }
    for outcome, count in outcomes.items():
        if count:
            counter.labels(kind, outcome).inc(count)


def record_verify(*, ok: bool, at: float) -> None:
    metrics = instruments()
    metrics.audit_verify_time.set(at)
    metrics.audit_verify_failed.set(0 if ok else 1)


# Registered once for every session: a count waits for its transaction's commit, so that a
# rolled-back change (a 409, a 503) is never counted.
@event.listens_for(Session, "after_commit")
def _count_committed(session: Session) -> None:
    counts: list[Callable[[], None]] = session.info.pop(_AFTER_COMMIT, [])
    for count in counts:
        count()


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)


def watch_pool(engine: Engine) -> None:
    """Count the engine's connections in use (checked out of its pool)."""

    def checked_out(*_: Any) -> None:
        instruments().db_connections_in_use.inc()

    def checked_in(*_: Any) -> None:
        instruments().db_connections_in_use.dec()

    event.listen(engine, "checkout", checked_out)
    event.listen(engine, "checkin", checked_in)
