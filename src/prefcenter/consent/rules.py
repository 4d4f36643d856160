"""Owns the pure rules that decide what a consent change does to the current state.

No database here: every function takes plain values and is tested without one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from prefcenter.consent.errors import EvidenceRequired, ReasonRequired, RecipientOptOutProtected


class Status(StrEnum):
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"
    PENDING = "pending"  # double opt-in: asked for, not yet confirmed by the person


class Outcome(StrEnum):
    APPLIED = "applied"  # the state changed
    UNCHANGED = "unchanged"  # the state already said this
    SUPERSEDED = "superseded"  # older than the current state: recorded, changes nothing


class ActorKind(StrEnum):
    RECIPIENT = "recipient"  # the person, through a link, page or confirmation
    API_CLIENT = "api_client"
    ADMIN = "admin"  # an `admin` key or a support-desk user


# Sources that mean the person acted themselves, whoever forwards the change: an opt-out with
# one of these cannot be reversed by an API client (the sync-loop guard).
RECIPIENT_SOURCES = frozenset(
    {
        "recipient",
        "one_click",
        "unsubscribe_page",
        "unsubscribe_link",
        "list_unsubscribe",
        "mailto",
        "preference_center",
        "confirmation",
        "support",
        "email",
        "phone",
        "complaint",
        # The person unsubscribed at the ESP (its unsubscribe link or preference page).
        "esp_unsubscribe",
    }
)

# Sources of a change that the support desk takes down (the person wrote or called): an admin
# recording one must say why, so the trail shows the request it came from.
SUPPORT_SOURCES = frozenset({"support", "email", "phone"})


@dataclass(frozen=True, slots=True)
class CurrentState:
    status: Status
    occurred_at: datetime
    by_recipient: bool


@dataclass(frozen=True, slots=True)
class RequestedChange:
    status: Status  # SUBSCRIBED or UNSUBSCRIBED: what the caller asks for
    occurred_at: datetime  # as claimed; clamp_occurred_at is applied by decide_change
    actor: ActorKind
    source: str
    reason: str | None = None
    double_opt_in: bool = False
    # The person followed a confirmation link: what double opt-in waits for.
    confirmed: bool = False
    # The change comes with proof (a non-empty `evidence` document).
    with_evidence: bool = False

    @property
    def by_recipient(self) -> bool:
        return self.actor is ActorKind.RECIPIENT or self.source in RECIPIENT_SOURCES


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    from_status: Status | None
    # The state after the change: for UNCHANGED and SUPERSEDED, the state as it was.
    status: Status
    occurred_at: datetime  # the change's time, clamped
    by_recipient: bool
    clamped: bool

    @property
    def changed(self) -> bool:
        return self.outcome is Outcome.APPLIED


def clamp_occurred_at(claimed: datetime, now: datetime) -> datetime:
    """A change cannot have happened in the future: a clock ahead of ours would otherwise win
    every later ordering comparison."""
    return min(claimed, now)


def _target_status(current: CurrentState | None, change: RequestedChange) -> Status:
    if change.status is not Status.SUBSCRIBED or not change.double_opt_in:
        return change.status
    if change.confirmed:
        return Status.SUBSCRIBED  # the person confirmed it from their mailbox
    if current is not None and current.status is Status.SUBSCRIBED:
        return Status.SUBSCRIBED  # already confirmed: asking again changes nothing
    return Status.PENDING


def _has_reason(change: RequestedChange) -> bool:
    return bool(change.reason and change.reason.strip())


def check_support_reason(change: RequestedChange) -> None:
    """An admin taking down a change the person asked for by mail or phone says why."""
    support = change.actor is ActorKind.ADMIN and change.source in SUPPORT_SOURCES
    if support and not _has_reason(change):
        raise ReasonRequired(
            f"A change from the support desk (source `{change.source}`) needs a `reason` "
            "saying how the person asked (for example the ticket or call)."
        )


def check_reversal_allowed(opt_out: CurrentState | None, change: RequestedChange) -> None:
    """Refuse to undo a person's own opt-out unless the person, or an admin with a reason, asks.

    This is what stops two tools that sync with each other from resubscribing people.
    """
    if opt_out is None or opt_out.status is not Status.UNSUBSCRIBED or not opt_out.by_recipient:
        return
    if change.status is Status.UNSUBSCRIBED or change.actor is ActorKind.RECIPIENT:
        return
    if change.actor is ActorKind.ADMIN:
        if not _has_reason(change):
            raise ReasonRequired(
                "The person opted out themselves; an admin may reverse that only with a "
                "`reason` saying why (for example the ticket in which they asked)."
            )
        if not change.with_evidence:
            raise EvidenceRequired(
                "The person opted out themselves; an admin may reverse that only with "
                "`evidence` of their new consent (for example the signed form or the message "
                "in which they asked)."
            )
        return
    raise RecipientOptOutProtected(
        "The person opted out themselves, so an API client cannot subscribe them again. "
        "Only the person (preference page, confirmation link) or an admin key with a "
        "`reason` can reverse it."
    )


def needs_mailbox_proof(current: CurrentState | None) -> bool:
    """Whether turning a topic back on from a page opened by a link reverses the person's own
    opt-out. Whoever holds the link can open the page (a forwarded mail, a mailbox provider
    that saw the header, a log), so that needs proof that the person holds the mailbox: a
    confirmation mail, or the support desk. Turning on a topic the person never opted out of
    themselves does not (design promise 3: links only ever reduce what the person refused)."""
    return current is not None and current.status is Status.UNSUBSCRIBED and current.by_recipient


def decide_change(
    current: CurrentState | None, change: RequestedChange, *, now: datetime
) -> Decision:
    """Apply the ordering rule: an older change is superseded, a tie goes to the opt-out, and
    a person's own opt-out is guarded against API clients (check_reversal_allowed). A support
    desk change without a reason is refused first (check_support_reason)."""
    check_support_reason(change)
    occurred_at = clamp_occurred_at(change.occurred_at, now)
    clamped = occurred_at != change.occurred_at
    target = _target_status(current, change)
    if current is None:
        return Decision(
            outcome=Outcome.APPLIED,
            from_status=None,
            status=target,
            occurred_at=occurred_at,
            by_recipient=change.by_recipient,
            clamped=clamped,
        )
    stale = occurred_at < current.occurred_at or (
        occurred_at == current.occurred_at
        and current.status is Status.UNSUBSCRIBED
        and target is not Status.UNSUBSCRIBED
    )
    if stale:
        return Decision(
            outcome=Outcome.SUPERSEDED,
            from_status=current.status,
            status=current.status,
            occurred_at=occurred_at,
            by_recipient=current.by_recipient,
            clamped=clamped,
        )
    check_reversal_allowed(current, change)
    if target is current.status:
        # Same state, newer evidence. A person repeating an opt-out that a tool recorded makes
        # it theirs (and so guarded).
        by_recipient = current.by_recipient or (
            target is Status.UNSUBSCRIBED and change.by_recipient
        )
        return Decision(
            outcome=Outcome.UNCHANGED,
            from_status=current.status,
            status=current.status,
            occurred_at=max(occurred_at, current.occurred_at),
            by_recipient=by_recipient,
            clamped=clamped,
        )
    return Decision(
        outcome=Outcome.APPLIED,
        from_status=current.status,
        status=target,
        occurred_at=occurred_at,
        by_recipient=change.by_recipient,
        clamped=clamped,
    )
