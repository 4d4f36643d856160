"""Owns naming the opt-out that a resubscribe link reverses: a topic's opt-out by the event
that made it, "unsubscribe from all" by when it began. A link that names an opt-out stops
working once the state has moved on (the person changed it again, or it was reversed)."""

from __future__ import annotations

from prefcenter.consent.models import Subscription, Suppression
from prefcenter.consent.rules import Status

_ALL = "all:"


def topic_marker(subscription: Subscription) -> str:
    """The topic's opt-out, named by the event that made it."""
    return subscription.event_id


def all_marker(suppression: Suppression) -> str:
    """The "unsubscribe from all", named by when it began."""
    return f"{_ALL}{int(suppression.since.timestamp())}"


def current_marker(
    subscription: Subscription | None, suppression: Suppression | None, *, topic: bool
) -> str | None:
    """The marker of the opt-out a resubscribe link would reverse now, or None when there is
    none of that kind (nothing to reverse: the link is stale)."""
    if topic:
        if subscription is None or subscription.status != Status.UNSUBSCRIBED:
            return None
        return topic_marker(subscription)
    if suppression is None or not suppression.suppressed:
        return None
    return all_marker(suppression)
