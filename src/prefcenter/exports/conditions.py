"""Owns the SQL conditions both export paths share (the keyset chunks of `chunks` and the
PostgreSQL ranges of `ranges`): which contacts a topic's audience holds, derived from
`eligibility.rules` itself, and what an export prints as a contact's address."""

from __future__ import annotations

import itertools

from sqlalchemy import ColumnElement, and_, false, func, or_, select, true
from sqlalchemy.orm import Mapped
from sqlmodel import col

from prefcenter.bounces.models import Bounce
from prefcenter.consent.models import Subscription
from prefcenter.consent.rules import Status
from prefcenter.contacts.models import Contact
from prefcenter.eligibility.rules import TopicModel, decide_eligibility
from prefcenter.notices.reconsent import required_sql
from prefcenter.notices.rules import Reconsent
from prefcenter.topics.models import Topic
from prefcenter.topics.schemas import ConsentModel, TopicKind


def contact_address() -> ColumnElement[str]:
    """What the exports print as `email`: the address as the person gave it."""
    return func.coalesce(col(Contact.address_display), col(Contact.address))


def topic_model(topic: Topic) -> TopicModel:
    return TopicModel(kind=TopicKind(topic.kind), consent=ConsentModel(topic.consent))


def reconsent_where(rule: Reconsent | None) -> ColumnElement[bool] | None:
    """Whether the joined subscription must be given again under `rule` (None: never)."""
    if rule is None:
        return None
    return required_sql(rule, col(Subscription.notice_version_id), col(Subscription.occurred_at))


def allowed_where(
    model: TopicModel,
    suppressed: ColumnElement[bool],
    bounced: ColumnElement[bool],
    status: Mapped[str],
    reconsent: ColumnElement[bool] | None = None,
) -> tuple[ColumnElement[bool], bool]:
    """The SQL condition under which `decide_eligibility` allows a (not erased) contact, built
    by asking the rule itself about every state a contact can be in, so the export cannot
    disagree with it. Also says whether a contact without a subscription row can qualify (when
    not, the subscription is joined rather than outer-joined). `reconsent`: whether the
    subscription must be given again (notices.reconsent.required_sql); None: never."""
    states: list[Status | None] = [None, *Status]
    alternatives: list[ColumnElement[bool]] = []
    needs_no_row = False
    flags = (False, True) if reconsent is not None else (False,)
    for is_suppressed, is_bounced, is_stale in itertools.product(
        (False, True), (False, True), flags
    ):
        allowed = [
            state
            for state in states
            if decide_eligibility(
                model,
                erased=False,
                suppressed=is_suppressed,
                subscription=state,
                bounced=is_bounced,
                reconsent=is_stale,
            ).allowed
        ]
        if not allowed:
            continue
        needs_no_row = needs_no_row or None in allowed
        if len(allowed) == len(states):
            status_ok: ColumnElement[bool] = true()
        else:
            listed = [s.value for s in allowed if s is not None]
            parts: list[ColumnElement[bool]] = []
            if listed:
                parts.append(status.in_(listed))
            if None in allowed:
                parts.append(status.is_(None))
            status_ok = or_(*parts)
        suppression_ok = suppressed if is_suppressed else ~suppressed
        bounce_ok = bounced if is_bounced else ~bounced
        parts = [suppression_ok, bounce_ok, status_ok]
        if reconsent is not None:
            parts.append(reconsent if is_stale else ~reconsent)
        alternatives.append(and_(*parts))
    if not alternatives:
        return false(), needs_no_row
    return or_(*alternatives), needs_no_row


def bounced_exists(
    low: int | ColumnElement[int], high: int | ColumnElement[int] | None = None
) -> ColumnElement[bool]:
    """Whether the outer query's contact is bounced, read from the bounce key index within the
    keyset range (the range repeated here for the reason the other tables repeat it)."""
    conditions = [
        col(Bounce.contact_id) == col(Contact.id),
        col(Bounce.contact_id) > low,
        col(Bounce.bounced),
    ]
    if high is not None:
        conditions.append(col(Bounce.contact_id) <= high)
    return select(col(Bounce.contact_id)).where(*conditions).exists()
