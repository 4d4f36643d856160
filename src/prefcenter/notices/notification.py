"""Owns a material version's notification run: one notice mail per contact that may still be
told (not erased, not bounced; marketing opt-outs included, a notice is not marketing),
queued in one `INSERT … SELECT` in the transaction that publishes the version; and the run's
progress, counted from the outbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import String, and_, func, literal
from sqlalchemy import insert as core_insert
from sqlalchemy import select as core_select
from sqlmodel import Session

from prefcenter.bounces.models import Bounce
from prefcenter.contacts.models import Contact
from prefcenter.db import UtcDateTime
from prefcenter.mail.config import mail_config
from prefcenter.mail.schemas import MailTemplate
from prefcenter.notices.schemas import NotificationOut
from prefcenter.outbox.models import OutboxMessage
from prefcenter.outbox.schemas import OutboxKind, OutboxStatus
from prefcenter.settings import ConfigError, Settings

_MESSAGES = OutboxMessage.__table__  # type: ignore[attr-defined]
_CONTACTS = Contact.__table__  # type: ignore[attr-defined]
_BOUNCES = Bounce.__table__  # type: ignore[attr-defined]
_COLUMNS = (
    "kind",
    "message_id",
    "cause_event_id",
    "payload",
    "status",
    "created_at",
    "due_at",
    "attempts",
)
# The languages notice mails are written in; another version language gets English.
_MAIL_LANGUAGES = ("en", "de")


def message_id_domain(settings: Settings) -> str:
    """The sender's domain (as every mail's Message-ID), or the service's host while mail is
    off: the run is queued all the same, and sent once mail is on."""
    try:
        config = mail_config(settings)
    except ConfigError:
        config = None
    if config is not None:
        return config.domain
    return urlsplit(settings.base_url).hostname or "localhost"


def mail_language(language: str) -> str:
    primary = language.split("-", 1)[0].lower()
    return primary if primary in _MAIL_LANGUAGES else "en"


def _payload(session: Session, *, ref: str, language: str) -> Any:
    """The mail payload (mail.schemas.MailPayload) of each contact row, built by the database."""
    pairs: list[Any] = [
        literal("template"),
        literal(MailTemplate.NOTICE.value),
        literal("language"),
        literal(mail_language(language)),
        literal("contact_id"),
        _CONTACTS.c.public_id,
        literal("notice"),
        literal(ref),
    ]
    if session.get_bind().dialect.name == "postgresql":
        return func.json_build_object(*pairs)
    return func.json_object(*pairs)


def may_be_told() -> tuple[Any, ...]:
    """Which contacts a run includes: not erased, not bounced (marketing opt-outs included)."""
    return (
        _CONTACTS.c.address.is_not(None),
        ~core_select(_BOUNCES.c.contact_id)
        .where(_BOUNCES.c.contact_id == _CONTACTS.c.id, _BOUNCES.c.bounced)
        .exists(),
    )


def queue_notice_mails(
    session: Session,
    *,
    ref: str,
    version_id: int,
    language: str,
    event_id: str,
    settings: Settings,
    now: datetime,
) -> int:
    """Queue the run of version `ref` (`<key>@<version>`); returns how many mails. One
    statement whatever the number of contacts. The Message-ID is made of the version and the
    contact, so a contact gets at most one mail per version (the outbox's unique index)."""
    domain = message_id_domain(settings)
    prefix = f"<notice.{version_id}."
    rows = core_select(
        literal(OutboxKind.MAIL.value),
        literal(prefix) + _CONTACTS.c.public_id + literal(f"@{domain}>"),
        literal(event_id, String()),
        _payload(session, ref=ref, language=language),
        literal(OutboxStatus.QUEUED.value),
        literal(now, UtcDateTime()),
        literal(now, UtcDateTime()),
        literal(0),
    ).where(*may_be_told())
    session.execute(core_insert(_MESSAGES).from_select(list(_COLUMNS), rows))
    # Counted by the cause's index: not every driver reports an INSERT … SELECT's rowcount.
    counted = session.execute(
        core_select(func.count()).where(_MESSAGES.c.cause_event_id == event_id)
    ).scalar_one()
    return int(counted)


def notification_counts(session: Session, *, event_id: str) -> NotificationOut:
    """The run's mails by state. `bounced`: of those sent, the ones whose address has bounced
    since they were queued (also counted in `sent`)."""
    by_status = dict.fromkeys(OutboxStatus, 0)
    of_run = and_(
        _MESSAGES.c.cause_event_id == event_id,
        _MESSAGES.c.kind == OutboxKind.MAIL.value,
    )
    for status, count in session.execute(
        core_select(_MESSAGES.c.status, func.count()).where(of_run).group_by(_MESSAGES.c.status)
    ):
        by_status[OutboxStatus(status)] = count
    bounced = 0
    if by_status[OutboxStatus.SENT]:
        contact_id = _MESSAGES.c.payload["contact_id"].as_string()
        bounced = session.execute(
            core_select(func.count())
            .select_from(
                _MESSAGES.join(_CONTACTS, _CONTACTS.c.public_id == contact_id).join(
                    _BOUNCES, _BOUNCES.c.contact_id == _CONTACTS.c.id
                )
            )
            .where(
                of_run,
                _MESSAGES.c.status == OutboxStatus.SENT.value,
                _BOUNCES.c.bounced,
                _BOUNCES.c.since >= _MESSAGES.c.created_at,
            )
        ).scalar_one()
    return NotificationOut(
        queued=by_status[OutboxStatus.QUEUED],
        sent=by_status[OutboxStatus.SENT],
        failed=by_status[OutboxStatus.FAILED],
        bounced=bounced,
        skipped=by_status[OutboxStatus.CANCELLED],
    )
