"""Use cases of a run the team sends itself (`"delivery": "export"` or `"webhooks"`): which
run a request names, and the marks it sends back."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from prefcenter.audit.canonical import format_time
from prefcenter.notices.errors import NoNotificationRun
from prefcenter.notices.run_export import RunFacts
from prefcenter.notices.schemas import DeliveryMarks, DeliveryResults, RunDelivery
from prefcenter.notices.service import Actor, find_version
from prefcenter.notices.team_run import mark_deliveries


def team_run(session: Session, key: str, version: str) -> RunFacts:
    """A run the team sends itself, or NoNotificationRun (not material, or mailed by the
    service: marking those would count mails twice)."""
    notice, row = find_version(session, key, version)
    ref = f"{notice.key}@{row.version}"
    if not row.material:
        raise NoNotificationRun(f"{ref} is not material: it has no notification run.")
    if row.delivery == RunDelivery.SERVICE.value:
        raise NoNotificationRun(
            f"The service mails the run of {ref} itself (delivery service): its counts come "
            "from its own mails, not from marks."
        )
    assert row.id is not None
    return RunFacts(
        ref=ref,
        version_id=row.id,
        language=row.language,
        effective_at=format_time(row.effective_at),
        published_at=row.published_at,
    )


def mark_team_deliveries(
    session: Session, key: str, version: str, marks: DeliveryMarks, *, actor: Actor, now: datetime
) -> DeliveryResults:
    facts = team_run(session, key, version)
    results = mark_deliveries(
        session,
        marks.deliveries,
        ref=facts.ref,
        version_id=facts.version_id,
        actor=actor.name,
        now=now,
    )
    return DeliveryResults(results=results)
