"""Owns the metrics read from the database at scrape time: the audit head, the outbox. Each is
one cheap query (one row; an index on the outbox's status), run by whichever process answers
the scrape, so the numbers are the database's, not a sum over processes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Integer, String, column, text

from prefcenter.db import Database, UtcDateTime, utcnow
from prefcenter.outbox.schemas import OutboxKind, OutboxStatus
from prefcenter.problems import Problem

logger = logging.getLogger(__name__)


class DatabaseState(Collector):
    """The database's state as gauges; `prefcenter_database_up` 0 (and nothing else) when
    the database does not answer, so that a scrape never fails for it."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def collect(self) -> Iterator[Metric]:
        try:
            head_seq, outbox = self._read()
        except Problem as exc:  # db.transaction turns database failures into 503 problems
            logger.warning("metrics: the database did not answer: %s", exc.detail)
            yield GaugeMetricFamily(
                "prefcenter_database_up", "1 if the database answered the scrape.", value=0
            )
            return
        now = utcnow()
        yield GaugeMetricFamily(
            "prefcenter_database_up", "1 if the database answered the scrape.", value=1
        )
        yield GaugeMetricFamily(
            "prefcenter_audit_head_seq",
            "seq of the last event in the audit trail.",
            value=head_seq,
        )
        queued = GaugeMetricFamily(
            "prefcenter_outbox_queued_messages",
            "Outbox messages waiting to be delivered (due, retrying or being delivered).",
            labels=["kind"],
        )
        oldest = GaugeMetricFamily(
            "prefcenter_outbox_oldest_queued_age_seconds",
            "Age of the oldest queued outbox message (0 when none is queued).",
            labels=["kind"],
        )
        failed = GaugeMetricFamily(
            "prefcenter_outbox_failed_messages",
            "Outbox messages given up for good (refused, or every retry used).",
            labels=["kind"],
        )
        for kind in OutboxKind:
            count, created = outbox.get((kind.value, OutboxStatus.QUEUED.value), (0, None))
            queued.add_metric([kind.value], count)
            oldest.add_metric(
                [kind.value], max(0.0, (now - created).total_seconds()) if created else 0.0
            )
            failed.add_metric(
                [kind.value], outbox.get((kind.value, OutboxStatus.FAILED.value), (0, None))[0]
            )
        yield queued
        yield oldest
        yield failed

    def _read(self) -> tuple[int, dict[tuple[str, str], tuple[int, datetime | None]]]:
        with self.database.transaction(write=False, autocommit=True) as session:
            head_seq = session.execute(_HEAD_SEQ).scalar()
            rows = session.execute(_OUTBOX).all()
        return head_seq or 0, {(kind, status): (n, oldest) for kind, status, n, oldest in rows}


_HEAD_SEQ = text("SELECT seq FROM audit_head WHERE id = 1")
# On the (status, kind, due_at) index; failed messages are few, queued ones should be.
_OUTBOX = (
    text(
        "SELECT kind, status, COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox_message "
        "WHERE status IN (:queued, :failed) "
        "GROUP BY kind, status"
    )
    .bindparams(queued=OutboxStatus.QUEUED.value, failed=OutboxStatus.FAILED.value)
    .columns(
        column("kind", String),
        column("status", String),
        column("n", Integer),
        column("oldest", UtcDateTime),
    )
)
