"""Owns the deep check of the ledger (`audit verify --deep`): the current subscriptions and
suppressions must be exactly the state the events imply.

Replaying the events under the consent rules comes down to this: every event that was not
superseded set its row's status, claimed time and source (ledger.changes, whichever writer),
so the current row of a contact × topic (or a contact's suppression) is the last such event's
in `seq` order. The replay is done in SQL, set-based, after the plain verification has shown
that the query columns agree with the hashed bytes. audit.verify runs it through its `replay`
parameter (it sits below consent); `verify_ledger` is the verification with it wired in.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, Table, and_, case, false, func, or_, select, true
from sqlmodel import Session

from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.models import AuditEvent
from prefcenter.audit.schemas import EventKind
from prefcenter.audit.verify import Progress, VerifyResult, verify_chain
from prefcenter.consent.models import Subscription, Suppression
from prefcenter.contacts.models import Contact
from prefcenter.db import Database
from prefcenter.topics.models import Topic


def _table(model: type[object]) -> Table:
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


_events = _table(AuditEvent)
_contact = _table(Contact)
_topic = _table(Topic)
_subscription = _table(Subscription)
_suppression = _table(Suppression)
_ERASED = select(_contact.c.public_id).where(_contact.c.erased_at.is_not(None))


def _last_applied(kind: EventKind, *partition: Any) -> Any:
    """Per key, the last event of `kind` that was not superseded (erased contacts left out:
    erasure changes their state without a consent event)."""
    ranked = (
        select(
            _events.c.contact_id,
            _events.c.topic,
            _events.c.to_status,
            _events.c.occurred_at,
            _events.c.source,
            func.row_number()
            .over(partition_by=list(partition), order_by=_events.c.seq.desc())
            .label("rank"),
        )
        .where(
            _events.c.kind == kind.value,
            _events.c.outcome != "superseded",
            _events.c.contact_id.is_not(None),
            _events.c.contact_id.not_in(_ERASED),
        )
        .subquery()
    )
    return select(ranked).where(ranked.c.rank == 1).subquery()


def _first_differing(expected: Any, current: Any, same_key: Any, differs: Any) -> Select[Any]:
    contact = func.coalesce(expected.c.contact_id, current.c.contact_id)
    return (
        select(contact)
        .select_from(expected.join(current, same_key, full=True))
        .where(or_(expected.c.contact_id.is_(None), current.c.contact_id.is_(None), differs))
        .order_by(contact)
        .limit(1)
    )


def _subscriptions_check() -> Select[Any]:
    expected = _last_applied(EventKind.CONSENT_CHANGE, _events.c.contact_id, _events.c.topic)
    current = (
        select(
            _contact.c.public_id.label("contact_id"),
            _topic.c.key.label("topic"),
            _subscription.c.status,
            _subscription.c.occurred_at,
            _subscription.c.source,
        )
        .select_from(
            _subscription.join(_contact, _contact.c.id == _subscription.c.contact_id).join(
                _topic, _topic.c.id == _subscription.c.topic_id
            )
        )
        .where(_contact.c.erased_at.is_(None))
        .subquery()
    )
    return _first_differing(
        expected,
        current,
        and_(expected.c.contact_id == current.c.contact_id, expected.c.topic == current.c.topic),
        or_(
            expected.c.to_status != current.c.status,
            expected.c.occurred_at != current.c.occurred_at,
            expected.c.source != current.c.source,
        ),
    )


def _suppressions_check() -> Select[Any]:
    expected = _last_applied(EventKind.GLOBAL_CONSENT_CHANGE, _events.c.contact_id)
    current = (
        select(
            _contact.c.public_id.label("contact_id"),
            _suppression.c.suppressed,
            _suppression.c.occurred_at,
            _suppression.c.source,
        )
        .select_from(_suppression.join(_contact, _contact.c.id == _suppression.c.contact_id))
        .where(_contact.c.erased_at.is_(None))
        .subquery()
    )
    implied = case((expected.c.to_status == "unsubscribed", true()), else_=false())
    return _first_differing(
        expected,
        current,
        expected.c.contact_id == current.c.contact_id,
        or_(
            implied != current.c.suppressed,
            expected.c.occurred_at != current.c.occurred_at,
            expected.c.source != current.c.source,
        ),
    )


def first_contact_off_its_events(session: Session) -> str | None:
    """The first contact (by public id) whose subscriptions or suppression differ from what
    its events imply; None when every one agrees."""
    found = [
        contact
        for check in (_subscriptions_check(), _suppressions_check())
        if (contact := session.execute(check).scalar()) is not None
    ]
    return min(found) if found else None


def verify_ledger(
    database: Database, keys: AuditKeys, *, deep: bool = False, progress: Progress | None = None
) -> VerifyResult:
    """audit.verify.verify_chain, with the replay of the events against the current state
    when `deep`."""
    replay = first_contact_off_its_events if deep else None
    return verify_chain(database, keys, replay=replay, progress=progress)
