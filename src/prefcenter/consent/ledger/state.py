"""Owns reading stored consent state into consent.rules' `CurrentState`, from ORM rows or from
driver tuples: the one mapping every writer decides on."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefcenter.consent.models import Subscription, Suppression
from prefcenter.consent.rules import CurrentState, Status


def subscription_state(row: Subscription | None) -> CurrentState | None:
    if row is None:
        return None
    return CurrentState(Status(row.status), row.occurred_at, row.by_recipient)


def stored_subscription_state(
    status: str | None, occurred_at: datetime | None, by_recipient: bool | None
) -> CurrentState | None:
    """A subscription as a driver returns its columns (all None: there is none)."""
    if status is None or occurred_at is None:
        return None
    return CurrentState(Status(status), occurred_at, bool(by_recipient))


def suppression_state(row: Suppression | None) -> CurrentState | None:
    if row is None:
        return None
    return suppressed_state(row.suppressed, row.occurred_at, row.by_recipient)


def suppressed_state(suppressed: bool, occurred_at: datetime, by_recipient: bool) -> CurrentState:
    """The contact-wide opt-out seen as a state: suppressed = unsubscribed from all marketing."""
    status = Status.UNSUBSCRIBED if suppressed else Status.SUBSCRIBED
    return CurrentState(status, occurred_at, by_recipient)


def stored_suppression_state(
    suppressed: bool | None, occurred_at: datetime | None, by_recipient: bool | None
) -> CurrentState | None:
    """A suppression as a driver returns its columns (all None: there is none)."""
    if suppressed is None or occurred_at is None:
        return None
    return suppressed_state(bool(suppressed), occurred_at, bool(by_recipient))


def active_opt_out(suppression: CurrentState | None) -> CurrentState | None:
    """The contact-wide state that guards a marketing subscription: only an opt-out in force
    (a lifted one guards nothing)."""
    if suppression is None or suppression.status is not Status.UNSUBSCRIBED:
        return None
    return suppression


def subscription_row_state(row: dict[str, Any] | None) -> CurrentState | None:
    """A subscription as a row of its columns by name (None: there is none)."""
    if row is None:
        return None
    return stored_subscription_state(row["status"], row["occurred_at"], row["by_recipient"])


def suppression_row_state(row: dict[str, Any] | None) -> CurrentState | None:
    """A suppression as a row of its columns by name (None: there is none)."""
    if row is None:
        return None
    return stored_suppression_state(row["suppressed"], row["occurred_at"], row["by_recipient"])
