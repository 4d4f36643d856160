"""Reads of notices for the recipient pages."""

from __future__ import annotations

from sqlmodel import Session, col, select

from prefcenter.notices.models import Notice, NoticeVersion
from prefcenter.notices.schemas import NoticeKind, NoticeVersionOut
from prefcenter.notices.service import version_out


def versions_of_kind(session: Session, kind: NoticeKind) -> list[NoticeVersionOut]:
    """Every version of the notices of a kind, newest effective first (the unsubscribe page
    keeps the privacy policy's and picks the one in force itself)."""
    rows = session.exec(
        select(Notice, NoticeVersion)
        .join(NoticeVersion, col(NoticeVersion.notice_id) == col(Notice.id))
        .where(col(Notice.kind) == kind.value)
        .order_by(col(NoticeVersion.effective_at).desc(), col(NoticeVersion.id).desc())
    )
    return [version_out(notice, row) for notice, row in rows]
