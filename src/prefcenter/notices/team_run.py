"""Owns a notification run that the team sends itself (`"delivery": "export"` or
`"webhooks"`): its recipients, written set-based into `notice_delivery` when the version is
published (and, for webhooks, one `notice.recipient` delivery per recipient and endpoint); the
run's counts; and the marks the team sends back, each an audit event."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, case, func, literal
from sqlalchemy import insert as core_insert
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from prefcenter.audit.schemas import EventKind, NewEvent, new_event_id
from prefcenter.audit.service import append_event
from prefcenter.contacts.models import Contact
from prefcenter.notices.errors import (
    BounceIsFinal,
    NoRecipientEndpoint,
    NotARecipient,
    RecipientErased,
)
from prefcenter.notices.models import NoticeDelivery
from prefcenter.notices.notification import may_be_told
from prefcenter.notices.rules import mark_changes
from prefcenter.notices.schemas import (
    DeliveryMark,
    DeliveryMarked,
    DeliveryRefused,
    DeliveryStatus,
    NotificationOut,
)
from prefcenter.problems import Problem
from prefcenter.webhooks.queue import queue_per_recipient
from prefcenter.webhooks.queue_bulk import subscribed
from prefcenter.webhooks.rules import EventType

_DELIVERIES = NoticeDelivery.__table__  # type: ignore[attr-defined]
_CONTACTS = Contact.__table__  # type: ignore[attr-defined]


def queue_recipients(
    session: Session,
    *,
    ref: str,
    version_id: int,
    event_id: str,
    webhooks: bool,
    now: datetime,
) -> int:
    """Write the run's recipients (one statement whatever their number) and, for a run sent
    from webhooks, their `notice.recipient` deliveries (one more); returns how many. A run
    from webhooks that no endpoint would receive is refused before anything is written."""
    if webhooks and not subscribed(session, EventType.NOTICE_RECIPIENT, every=False):
        raise NoRecipientEndpoint(
            "No enabled webhook endpoint subscribes to notice.recipient by name (`*` does not "
            "take it: it carries addresses): the run would reach nobody. Create one "
            "(POST /v1/webhooks) or publish with another delivery.",
            errors=[{"field": "delivery", "detail": "no endpoint takes notice.recipient"}],
        )
    rows = core_select(
        literal(version_id),
        _CONTACTS.c.id,
        literal(DeliveryStatus.QUEUED.value, String()),
    ).where(*may_be_told())
    session.execute(
        core_insert(_DELIVERIES).from_select(["version_id", "contact_id", "status"], rows)
    )
    if webhooks:
        queue_per_recipient(
            session,
            _wanted(session, ref=ref, version_id=version_id),
            cause_event_id=event_id,
            now=now,
        )
    counted = session.execute(
        core_select(func.count()).where(_DELIVERIES.c.version_id == version_id)
    ).scalar_one()
    return int(counted)


def _wanted(session: Session, *, ref: str, version_id: int) -> Any:
    """The run's recipients as webhooks.queue wants them: the `webhook-id` is made of the
    version and the contact (the same on every retry), and the payload names both; the body
    is written when it is sent (delivery.notice_webhook), from the contact as it is then."""
    pairs: list[Any] = [
        literal("type"),
        literal(EventType.NOTICE_RECIPIENT.value),
        literal("notice"),
        literal(ref),
        literal("contact_id"),
        _CONTACTS.c.public_id,
    ]
    postgres = session.get_bind().dialect.name == "postgresql"
    payload = func.json_build_object(*pairs) if postgres else func.json_object(*pairs)
    return (
        core_select(
            _CONTACTS.c.id.label("ord"),
            literal(EventType.NOTICE_RECIPIENT.value, String()).label("type"),
            (literal(f"msg_notice.{version_id}.") + _CONTACTS.c.public_id).label("webhook_id"),
            payload.label("payload"),
            _CONTACTS.c.public_id.label("contact_id"),
        )
        .select_from(_DELIVERIES.join(_CONTACTS, _CONTACTS.c.id == _DELIVERIES.c.contact_id))
        .where(_DELIVERIES.c.version_id == version_id)
        .subquery("wanted")
    )


def team_counts(session: Session, *, version_id: int) -> NotificationOut:
    """Counts as the team marked them. `sent` includes the bounced (as for the service's
    own mails); a recipient erased before being marked is `skipped`."""
    erased = _CONTACTS.c.address.is_(None)
    state = case(
        (and_(_DELIVERIES.c.status == DeliveryStatus.QUEUED.value, erased), literal("skipped")),
        else_=_DELIVERIES.c.status,
    )
    found = dict.fromkeys(("queued", "sent", "failed", "bounced", "skipped"), 0)
    for status, count in session.execute(
        core_select(state, func.count())
        .select_from(_DELIVERIES.join(_CONTACTS, _CONTACTS.c.id == _DELIVERIES.c.contact_id))
        .where(_DELIVERIES.c.version_id == version_id)
        .group_by(state)
    ):
        found[str(status)] = int(count)
    return NotificationOut(
        queued=found["queued"],
        sent=found["sent"] + found["bounced"],
        failed=found["failed"],
        bounced=found["bounced"],
        skipped=found["skipped"],
    )


def mark_deliveries(
    session: Session,
    marks: Sequence[DeliveryMark],
    *,
    ref: str,
    version_id: int,
    actor: str,
    now: datetime,
) -> list[DeliveryMarked | DeliveryRefused]:
    """Record what became of each recipient, in request order: a mark that changes nothing
    (marked so already, or earlier in the batch) records nothing; each change is an audit
    event in this transaction. The rows are locked: two batches marking the same recipient
    at once are applied one after the other."""
    wanted = {mark.contact_id for mark in marks}
    query = (
        select(NoticeDelivery, Contact)
        .join(Contact, col(Contact.id) == col(NoticeDelivery.contact_id))
        .where(col(NoticeDelivery.version_id) == version_id, col(Contact.public_id).in_(wanted))
        .order_by(col(NoticeDelivery.contact_id))
        .with_for_update(of=NoticeDelivery)
    )
    found = {contact.public_id: (row, contact) for row, contact in session.exec(query)}
    results: list[DeliveryMarked | DeliveryRefused] = []
    for index, mark in enumerate(marks):
        try:
            results.append(_mark_one(session, mark, found, ref=ref, actor=actor, now=now))
        except Problem as problem:
            body = problem.body()
            body["errors"] = [{"field": f"deliveries[{index}].contact_id", "detail": problem.title}]
            results.append(DeliveryRefused(problem=body))
    return results


def _mark_one(
    session: Session,
    mark: DeliveryMark,
    found: dict[str, tuple[NoticeDelivery, Contact]],
    *,
    ref: str,
    actor: str,
    now: datetime,
) -> DeliveryMarked:
    pair = found.get(mark.contact_id)
    if pair is None:
        raise NotARecipient(f"Contact {mark.contact_id!r} is not a recipient of {ref}.")
    row, contact = pair
    if contact.address is None:
        raise RecipientErased(
            f"Contact {mark.contact_id!r} was erased: nothing more is recorded of them."
        )
    changes = mark_changes(row.status, mark.status.value)
    if changes is None:
        raise BounceIsFinal(
            f"The delivery to {mark.contact_id!r} is marked bounced already; a bounce is final."
        )
    if not changes:
        return DeliveryMarked(
            contact_id=mark.contact_id,
            status=DeliveryStatus(row.status),
            changed=False,
            event_id=None,
        )
    event_id = new_event_id()
    append_event(
        session,
        NewEvent(
            id=event_id,
            kind=EventKind.NOTICE_DELIVERY,
            occurred_at=now,
            actor=actor,
            source="api",
            outcome=mark.status.value,
            contact_id=contact.public_id,
            address=contact.address,
            from_status=row.status,
            to_status=mark.status.value,
            evidence={"notice": ref, **({"detail": mark.detail} if mark.detail else {})},
        ),
    )
    row.status, row.marked_at, row.event_id = mark.status.value, now, event_id
    session.add(row)
    return DeliveryMarked(
        contact_id=mark.contact_id, status=mark.status, changed=True, event_id=event_id
    )


def recipients_since(session: Session, *, version_id: int, after_id: int, limit: int) -> Any:
    """A chunk of the run's recipients not erased, after contact row id `after_id`:
    (row id, public id, address, status)."""
    return session.execute(
        core_select(
            _CONTACTS.c.id,
            _CONTACTS.c.public_id,
            _CONTACTS.c.address,
            _DELIVERIES.c.status,
        )
        .select_from(_DELIVERIES.join(_CONTACTS, _CONTACTS.c.id == _DELIVERIES.c.contact_id))
        .where(
            _DELIVERIES.c.version_id == version_id,
            _DELIVERIES.c.contact_id > after_id,
            _CONTACTS.c.address.is_not(None),
        )
        .order_by(_DELIVERIES.c.contact_id)
        .limit(limit)
    ).all()
