"""Owns what the exports write: their CSV headers and the reasons of `/v1/suppressions`."""

from __future__ import annotations

from enum import StrEnum

SUPPRESSIONS_HEADER = ("email", "reason", "since")
AUDIENCE_HEADER = ("email", "contact_id")


class SuppressionReason(StrEnum):
    """The `reason` column of `/v1/suppressions`. Persisted by integrations: only ever added."""

    # The contact opted out of all marketing (a contact-wide `suppression` row in force).
    UNSUBSCRIBED_ALL = "unsubscribed_all"
    # The person was erased: the row is counted but carries no address (an empty `email`;
    # only a keyed hash of it is kept, and that stays out of exports), `since` the erasure.
    ERASED = "erased"
    # The address hard-bounced (bounces.models.Bounce): no mail of any kind. A contact that is
    # also opted out of all marketing has a row for each, the opt-out's first.
    BOUNCED = "bounced"
