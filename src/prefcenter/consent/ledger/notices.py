"""Owns reading the notice a topic is bound to, as the write model decides on it
(ledger.changes.given_under): a query only for a bound topic."""

from __future__ import annotations

from sqlmodel import Session

from prefcenter.consent.ledger.changes import BoundNotice
from prefcenter.notices.reconsent import versions_given_under


def bound_notice(session: Session, key: str | None) -> BoundNotice | None:
    """The notice a topic is bound to, with its versions (None: unbound)."""
    if key is None:
        return None
    return BoundNotice(key=key, versions=tuple(versions_given_under(session, key)))
