"""Owns what one imported row may do to a contact's consent: add subscriptions and opt-outs,
never reverse an opt-out or touch an erased person.

Pure: plain values in, a decision out. Ordering (an older row is superseded, a tie goes to the
opt-out) is consent.rules.decide_change itself, so an import and the API agree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from prefcenter.consent.rules import (
    ActorKind,
    CurrentState,
    Decision,
    Outcome,
    RequestedChange,
    Status,
    decide_change,
)
from prefcenter.topics.schemas import TopicKind

# The contract's source for every change an import makes; the import's own name goes into
# the event's evidence.
IMPORT_SOURCE = "import"
# Who makes an import's changes: an operator, never the person.
IMPORT_ACTOR = ActorKind.ADMIN


class RowOutcome(StrEnum):
    SUBSCRIBED = "subscribed"  # applied: the topic is now subscribed
    UNSUBSCRIBED = "unsubscribed"  # applied: the topic is now unsubscribed
    UNCHANGED = "unchanged"  # the state already said this: nothing written
    SUPERSEDED = "superseded"  # older than the current state: nothing written
    REFUSED_REVERSAL = "refused_reversal"  # would undo an opt-out: nothing written
    REFUSED_ERASED = "refused_erased"  # the person was erased: nothing written
    # `subscribed` to a sharing topic without the row's own evidence: nothing written
    REFUSED_NO_EVIDENCE = "refused_no_evidence"


@dataclass(frozen=True, slots=True)
class ContactState:
    """What the import needs to know of a contact before deciding a row."""

    erased: bool
    # The contact-wide marketing opt-out, as consent.ledger.state.suppression_state sees it.
    suppression: CurrentState | None
    subscription: CurrentState | None


NEW_CONTACT = ContactState(erased=False, suppression=None, subscription=None)


@dataclass(frozen=True, slots=True)
class RowDecision:
    outcome: RowOutcome
    # The consent rule's decision (None for refused rows).
    decision: Decision | None = None

    @property
    def applied(self) -> bool:
        return self.outcome in (RowOutcome.SUBSCRIBED, RowOutcome.UNSUBSCRIBED)


def requested_change(status: Status, occurred_at: datetime) -> RequestedChange:
    """An import row as a consent change: an operator's act, never the person's own."""
    return RequestedChange(
        status=status, occurred_at=occurred_at, actor=IMPORT_ACTOR, source=IMPORT_SOURCE
    )


def is_opted_out(state: CurrentState | None) -> bool:
    return state is not None and state.status is Status.UNSUBSCRIBED


def decide_row(
    state: ContactState,
    status: Status,
    occurred_at: datetime,
    *,
    topic_kind: TopicKind,
    now: datetime,
    with_evidence: bool = False,
) -> RowDecision:
    """Decide one row against the contact's state.

    In order: an erased person is never touched (recreating them would store the address
    again); a `subscribed` row against any opt-out of the topic — or, for a marketing topic,
    a contact-wide one — is refused whoever made that opt-out and however old the row is (an
    import is a bulk, unattended act: it has none of the evidence that could justify undoing
    a person's no); otherwise the consent ordering rule decides.

    Double opt-in is not asked for: the file is the other tool's record of subscriptions it
    already holds, and the event names the file as the evidence. Sharing is the exception: a
    `subscribed` row of a sharing topic needs its own evidence (`with_evidence`), since a list
    of addresses is no proof that each person agreed to their data going to a third party.
    """
    if state.erased:
        return RowDecision(RowOutcome.REFUSED_ERASED)
    if status is Status.SUBSCRIBED and topic_kind is TopicKind.SHARING and not with_evidence:
        return RowDecision(RowOutcome.REFUSED_NO_EVIDENCE)
    if status is Status.SUBSCRIBED and (
        is_opted_out(state.subscription)
        or (topic_kind is TopicKind.MARKETING and is_opted_out(state.suppression))
    ):
        return RowDecision(RowOutcome.REFUSED_REVERSAL)
    decision = decide_change(state.subscription, requested_change(status, occurred_at), now=now)
    if decision.outcome is Outcome.SUPERSEDED:
        return RowDecision(RowOutcome.SUPERSEDED, decision)
    if decision.outcome is Outcome.UNCHANGED:
        return RowDecision(RowOutcome.UNCHANGED, decision)
    if decision.status is Status.SUBSCRIBED:
        return RowDecision(RowOutcome.SUBSCRIBED, decision)
    # An imported opt-out is guarded like the person's own (`by_recipient`): the file cannot
    # say who opted out, and an API client syncing from the old tool must not be able to
    # subscribe the person again (the sync-loop guard of consent.rules).
    return RowDecision(RowOutcome.UNSUBSCRIBED, replace(decision, by_recipient=True))


def state_after(state: ContactState, row: RowDecision) -> ContactState:
    """The contact's state once an applied row is written, for the next row of the same
    contact in the same batch (rows are decided in file order)."""
    if not row.applied or row.decision is None:
        return state
    decision = row.decision
    subscription = CurrentState(decision.status, decision.occurred_at, decision.by_recipient)
    return ContactState(
        erased=state.erased, suppression=state.suppression, subscription=subscription
    )
