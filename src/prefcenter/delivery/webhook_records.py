"""Owns recording a batch of webhook deliveries, in one transaction: every attempt, and what
the batch says of each endpoint (one that answered is not failing; one whose every attempt
failed is failing since the first, and disabled after five days; one that answered 410 is
disabled at once)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select as core_select
from sqlalchemy import update

from prefcenter.db import Database
from prefcenter.outbox import service as outbox
from prefcenter.outbox.schemas import Attempted, AttemptOutcome
from prefcenter.webhooks.models import WebhookEndpoint
from prefcenter.webhooks.rules import failing_too_long
from prefcenter.webhooks.service import Actor, disable_endpoint

logger = logging.getLogger(__name__)

SENDER = Actor(name="prefcenter:outbox", channel="webhooks")
_ENDPOINTS = WebhookEndpoint.__table__  # type: ignore[attr-defined]


@dataclass(slots=True)
class Sent:
    attempted: Attempted
    endpoint_id: int | None
    gone: bool = False  # answered 410
    reached: bool = False  # a 2xx


def record_batch(
    database: Database,
    sent: list[Sent],
    untried: list[int],
    *,
    claim: str,
    now: datetime,
    worker: str,
    draw: Callable[[], float],
) -> tuple[outbox.Recorded, list[str]]:
    """Every attempt, and what the batch says of each endpoint: one that answered is not
    failing; one whose every attempt failed is failing since the first (disabled after
    five days); one that answered 410 is disabled."""
    reached = {s.endpoint_id for s in sent if s.reached and s.endpoint_id is not None}
    failed: dict[int, datetime] = {}
    for s in sent:
        if s.endpoint_id is None or s.reached or s.endpoint_id in reached:
            continue
        if s.attempted.outcome in (AttemptOutcome.RETRY, AttemptOutcome.FAILED):
            first = failed.get(s.endpoint_id)
            at = s.attempted.finished_at
            failed[s.endpoint_id] = at if first is None or at < first else first
    gone = {s.endpoint_id for s in sent if s.gone and s.endpoint_id is not None}
    disabled: list[str] = []
    with database.transaction(write=True) as session:
        recorded = outbox.record_attempts(
            session,
            [s.attempted for s in sent],
            claim=claim,
            worker=worker,
            draw=draw,
        )
        outbox.release(session, untried, claim=claim)
        if reached:
            session.execute(
                update(_ENDPOINTS)
                .where(_ENDPOINTS.c.id.in_(reached), _ENDPOINTS.c.failing_since.is_not(None))
                .values(failing_since=None)
            )
        for endpoint_id, since in failed.items():
            session.execute(
                update(_ENDPOINTS)
                .where(_ENDPOINTS.c.id == endpoint_id, _ENDPOINTS.c.failing_since.is_(None))
                .values(failing_since=since)
            )
        too_long = set()
        if failed:
            for endpoint_id, since in session.execute(
                core_select(_ENDPOINTS.c.id, _ENDPOINTS.c.failing_since).where(
                    _ENDPOINTS.c.id.in_(list(failed)), _ENDPOINTS.c.enabled
                )
            ):
                if failing_too_long(since, now):
                    too_long.add(endpoint_id)
        for endpoint_id in sorted(gone | too_long):
            reason = (
                "the receiver answered 410 Gone"
                if endpoint_id in gone
                else "every delivery failed for 5 days"
            )
            if disable_endpoint(session, endpoint_id, reason=reason, actor=SENDER, now=now):
                disabled.append(f"{endpoint_id}: {reason}")
    for line in disabled:
        logger.warning("webhook endpoint disabled: %s", line)
    return recorded, disabled
