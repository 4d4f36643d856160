"""Owns reading what re-consent is decided on: the versions of the notices topics are bound
to, as notices.rules takes them, and the SQL condition the set-based readers (exports) ask."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, or_
from sqlmodel import Session, col, select

from prefcenter.notices.models import Notice, NoticeVersion
from prefcenter.notices.rules import Reconsent, VersionFacts, reconsent_at


def reconsent_by_notice(
    session: Session, keys: Collection[str], *, now: datetime
) -> dict[str, Reconsent]:
    """The re-consent each of these notices asks for at `now` (one query; a notice that asks
    for none is absent)."""
    if not keys:
        return {}
    versions: dict[str, list[VersionFacts]] = defaultdict(list)
    for key, version_id, effective_at, material in session.execute(
        select(
            col(Notice.key),
            col(NoticeVersion.id),
            col(NoticeVersion.effective_at),
            col(NoticeVersion.material),
        )
        .join(Notice, col(Notice.id) == col(NoticeVersion.notice_id))
        .where(col(Notice.key).in_(sorted(keys)))
    ):
        versions[key].append(VersionFacts(version_id, effective_at, bool(material)))
    found = {key: reconsent_at(facts, now=now) for key, facts in versions.items()}
    return {key: rule for key, rule in found.items() if rule is not None}


def reconsent_of(session: Session, key: str | None, *, now: datetime) -> Reconsent | None:
    """The re-consent the notice a topic is bound to asks for at `now` (None: unbound, or
    nothing asked)."""
    if key is None:
        return None
    return reconsent_by_notice(session, [key], now=now).get(key)


def versions_given_under(session: Session, key: str) -> list[tuple[int, str, datetime]]:
    """Every version of a notice as (row id, label, effective_at): what a consent to a topic
    bound to it may be given under (ledger.changes)."""
    return [
        (int(version_id), str(label), effective_at)
        for version_id, label, effective_at in session.execute(
            select(
                col(NoticeVersion.id), col(NoticeVersion.version), col(NoticeVersion.effective_at)
            )
            .join(Notice, col(Notice.id) == col(NoticeVersion.notice_id))
            .where(col(Notice.key) == key)
        )
    ]


def required_sql(rule: Reconsent, version_id: Any, occurred_at: Any) -> ColumnElement[bool]:
    """`rule.required(version_id, occurred_at)` as SQL over a subscription's columns; false
    where there is no subscription row (both NULL)."""
    standing = func.coalesce(version_id.in_(sorted(rule.standing)), false())
    older = func.coalesce(version_id.in_(sorted(rule.older)), false()) if rule.older else false()
    return func.coalesce(and_(~standing, or_(older, occurred_at < rule.since)), false())
