"""Owns turning a requested change into what the ledger writes: its decision under
consent.rules, the columns it sets on its subscription or suppression row, and its audit event.
Pure: every writer (ledger.orm, ledger.lane, ledger.batch) calls these, so they cannot drift."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from prefcenter.audit.schemas import EventKind, NewEvent
from prefcenter.consent.ledger.state import active_opt_out
from prefcenter.consent.rules import (
    CurrentState,
    Decision,
    Outcome,
    RequestedChange,
    Status,
    check_reversal_allowed,
    decide_change,
)
from prefcenter.notices.rules import split_ref, version_given
from prefcenter.topics.schemas import TopicKind

SUBSCRIPTION_COLUMNS = ("status", "occurred_at", "since", "source", "by_recipient", "event_id")
SUPPRESSION_COLUMNS = ("suppressed", "occurred_at", "since", "source", "by_recipient")


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """Who asks for a change and what they show for it, as it goes into the audit event."""

    actor: str
    source: str
    campaign_id: str | None = None
    reason: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    # Who is handed the confirmation link if the change leaves a subscription pending (an API
    # client while the service sends no mail itself, else `mail`): the trail then says who
    # could confirm.
    confirm_link_to: str | None = None


def needs_suppression(topic_kind: TopicKind | str, requested: RequestedChange) -> bool:
    """Whether a topic change is decided on the contact-wide opt-out too (a writer need not
    read it otherwise)."""
    return topic_kind == TopicKind.MARKETING and requested.status is Status.SUBSCRIBED


def decide_topic_change(
    subscription: CurrentState | None,
    suppression: CurrentState | None,
    *,
    topic_kind: TopicKind,
    requested: RequestedChange,
    now: datetime,
) -> Decision:
    """A change of one topic: a person who opted out of all marketing themselves is not
    re-enrolled topic by topic (the guard on the contact-wide opt-out), then the ordering rule
    against the subscription. Raises the guard's problems (consent.errors)."""
    if needs_suppression(topic_kind, requested):
        check_reversal_allowed(active_opt_out(suppression), requested)
    return decide_change(subscription, requested, now=now)


def decide_global_change(
    suppression: CurrentState | None, requested: RequestedChange, *, now: datetime
) -> Decision:
    """A contact-wide change. Lifting an opt-out where there never was one changes nothing for
    eligibility (UNCHANGED); the row still records when "not suppressed" was asserted, so an
    older opt-out loses to it."""
    decision = decide_change(suppression, requested, now=now)
    if suppression is None and decision.status is Status.SUBSCRIBED:
        return Decision(
            outcome=Outcome.UNCHANGED,
            from_status=None,
            status=Status.SUBSCRIBED,
            occurred_at=decision.occurred_at,
            by_recipient=decision.by_recipient,
            clamped=decision.clamped,
        )
    return decision


def subscription_change(
    decision: Decision, requested: RequestedChange, *, now: datetime, event_id: str
) -> dict[str, Any]:
    """The columns a decided (not superseded) change sets on its subscription row; a new row
    gets them all (it is always an applied change)."""
    values: dict[str, Any] = {
        "status": decision.status.value,
        "occurred_at": decision.occurred_at,
        "source": requested.source,
        "by_recipient": decision.by_recipient,
    }
    if decision.outcome is Outcome.APPLIED:
        values["since"] = now
        values["event_id"] = event_id
    return values


def suppression_change(
    decision: Decision, requested: RequestedChange, *, now: datetime, was_suppressed: bool | None
) -> dict[str, Any]:
    """The columns a decided (not superseded) contact-wide change sets on the suppression row
    (`was_suppressed` None: there is none yet, and these make it)."""
    suppressed = decision.status is Status.UNSUBSCRIBED
    values: dict[str, Any] = {
        "suppressed": suppressed,
        "occurred_at": decision.occurred_at,
        "source": requested.source,
        "by_recipient": decision.by_recipient,
    }
    if (
        was_suppressed is None
        or was_suppressed != suppressed
        or decision.outcome is Outcome.APPLIED
    ):
        values["since"] = now
    return values


def change_event(
    *,
    event_id: str,
    contact_id: str,
    address: str | None,
    topic_key: str | None,
    requested: RequestedChange,
    record: ChangeRecord,
    decision: Decision,
) -> NewEvent:
    """The audit event of a decided change: what every writer of consent records."""
    context = event_context(requested, record, decision)
    return NewEvent(
        id=event_id,
        kind=EventKind.CONSENT_CHANGE if topic_key is not None else EventKind.GLOBAL_CONSENT_CHANGE,
        occurred_at=decision.occurred_at,
        actor=record.actor,
        source=record.source,
        outcome=decision.outcome.value,
        contact_id=contact_id,
        address=address,
        topic=topic_key,
        from_status=decision.from_status.value if decision.from_status else None,
        to_status=requested.status.value
        if decision.outcome is Outcome.SUPERSEDED
        else decision.status.value,
        campaign_id=record.campaign_id,
        reason=record.reason,
        evidence=record.evidence,
        context=context,
    )


def event_context(
    requested: RequestedChange, record: ChangeRecord, decision: Decision
) -> dict[str, Any]:
    """The context of a decided change's evidence document: who acted, what the record gives,
    the time a clamped change claimed, who was handed a pending subscription's link."""
    context = {"actor_kind": requested.actor.value, **record.context}
    if decision.clamped:
        context["claimed_occurred_at"] = requested.occurred_at.isoformat()
    if (
        record.confirm_link_to is not None
        and decision.outcome is Outcome.APPLIED
        and decision.status is Status.PENDING
    ):
        context["confirm_link_to"] = record.confirm_link_to
    return context


def counted_source(requested: RequestedChange) -> str:
    """The `source` label a change is counted under (metrics.count_consent_change): a
    recipient's channel names the source, else the actor's kind (an API client's own source
    names are no bounded label)."""
    return requested.source if requested.by_recipient else requested.actor.value


@dataclass(frozen=True, slots=True)
class BoundNotice:
    """The notice a topic is bound to, with every version as (row id, label, effective_at)."""

    key: str
    versions: tuple[tuple[int, str, datetime], ...]

    def ref(self, version_id: int) -> str:
        return next(f"{self.key}@{label}" for i, label, _ in self.versions if i == version_id)


@dataclass(frozen=True, slots=True)
class GivenUnder:
    """A decided topic change with the notice version its subscription stands on after it:
    the decision as recorded, the column it sets, and the record (its trail names it)."""

    decision: Decision
    values: dict[str, Any]
    record: ChangeRecord


def given_under(
    decision: Decision,
    requested: RequestedChange,
    record: ChangeRecord,
    *,
    bound: BoundNotice | None,
    stored: int | None,
) -> GivenUnder:
    """Which notice version a decided (not superseded) change of a bound topic is given under:
    the version of that notice the change names (`notice` of POST /v1/consents, or the one the
    recipient pages show), else the one in force at the change's time. Unbound: the stored
    value stays.

    A change that sets the state is given under it. One that repeats a subscription counts as
    consent given again only when the person acts (their page, a confirmation link) or the
    change names the version: an API client or sync repeating "subscribed" is no new consent
    to a changed notice, so the subscription keeps its version. A repeat that moves the
    version is recorded as applied: what eligibility answers changes with it (re-consent)."""
    if bound is None:
        return GivenUnder(decision, {"notice_version_id": stored}, record)
    named = _named_label(record, bound.key)
    given = version_given(bound.versions, named=named, at=decision.occurred_at)
    if decision.outcome is Outcome.UNCHANGED and not (requested.by_recipient or named):
        given = stored
    if (
        decision.outcome is Outcome.UNCHANGED
        and decision.status is Status.SUBSCRIBED
        and given != stored
    ):
        decision = replace(decision, outcome=Outcome.APPLIED)
    if given is not None:
        record = replace(record, context={**record.context, "given_under": bound.ref(given)})
    return GivenUnder(decision, {"notice_version_id": given}, record)


def _named_label(record: ChangeRecord, notice_key: str) -> str | None:
    ref = record.context.get("notice")
    if not isinstance(ref, str):
        return None
    key, label = split_ref(ref)
    return label if key == notice_key else None
