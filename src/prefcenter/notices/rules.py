"""Pure rules of notices: how soon a version may take effect, and whether a consent may name
a version at the time it was given."""

from __future__ import annotations

from datetime import datetime, timedelta


def earliest_effective_at(published_at: datetime, *, period_days: int) -> datetime:
    """The soonest a version published at `published_at` may take effect without a reason:
    people are told `period_days` before a change applies to them."""
    return published_at + timedelta(days=period_days)


def needs_reason(effective_at: datetime, *, published_at: datetime, period_days: int) -> bool:
    """Whether taking effect at `effective_at` is sooner than the notice period allows."""
    return effective_at < earliest_effective_at(published_at, period_days=period_days)


def split_ref(ref: str) -> tuple[str, str]:
    """`<key>@<version>` as (key, version); the key holds no `@`."""
    key, _, version = ref.partition("@")
    return key, version


def superseded_at(occurred_at: datetime, *, next_effective_at: datetime | None) -> bool:
    """Whether a version had been replaced when a consent was given at `occurred_at`:
    the next version (by effective_at) had taken effect by then. A version not yet in force
    ("about to be") is not superseded: a person may be shown the coming text."""
    return next_effective_at is not None and next_effective_at <= occurred_at


def mark_changes(current: str, marked: str) -> bool | None:
    """Whether marking a recipient `marked` (sent, failed, bounced) changes what is recorded of
    them: False when it is what they are marked already (marking twice records nothing), None
    when refused. A bounce is final: a later `sent` is a sender's retry report that came late,
    and it would hide that the address does not take mail. A failed delivery may be marked
    sent after a retry, and a sent one bounced."""
    if current == marked:
        return False
    if current == "bounced":
        return None
    return True
