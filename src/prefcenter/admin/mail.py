"""Owns what the console's "Outgoing mail" page shows: the outbox (each message's state,
attempts and last error, its recipient masked) and, when mail goes to a Maildir (the default
on SQLite), the mails in it, so that a newcomer sees every mail the service would send."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlmodel import Session, col, select

from prefcenter.contacts.models import Contact
from prefcenter.contacts.service import mask_address
from prefcenter.mail.config import MailConfig, MaildirTarget
from prefcenter.mail.maildir import MailSummary, MailText, newest_mail, read_mail
from prefcenter.outbox.models import OutboxMessage
from prefcenter.outbox.schemas import OutboxKind, OutboxStatus
from prefcenter.outbox.service import newest, status_counts
from prefcenter.problems import NotFound

PAGE_SIZE = 50


class MailNotFound(NotFound):
    pass


@dataclass(frozen=True, slots=True)
class QueuedView:
    message_id: str
    kind: str
    template: str
    recipient: str  # masked; "" when unknown (an erased contact)
    status: str
    attempts: int
    created_at: datetime
    due_at: datetime | None  # when a queued one is tried (again)
    finished_at: datetime | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class MailPage:
    transport: str | None  # None: mail is off
    default_maildir: bool
    counts: dict[OutboxStatus, int]
    queued: list[QueuedView]
    maildir: list[MailSummary]


def maildir_of(mail: MailConfig | None) -> Path | None:
    if mail is not None and isinstance(mail.target, MaildirTarget):
        return mail.target.path
    return None


def mail_page(session: Session, mail: MailConfig | None) -> MailPage:
    rows = newest(session, limit=PAGE_SIZE, kind=OutboxKind.MAIL)
    maildir = maildir_of(mail)
    return MailPage(
        transport=mail.target.describe() if mail is not None else None,
        default_maildir=mail is not None and mail.default,
        counts=status_counts(session, kind=OutboxKind.MAIL),
        queued=_views(session, rows),
        maildir=newest_mail(maildir, limit=PAGE_SIZE) if maildir is not None else [],
    )


def _views(session: Session, rows: list[OutboxMessage]) -> list[QueuedView]:
    public_ids = {str(r.payload.get("contact_id")) for r in rows if r.payload.get("contact_id")}
    addresses = {
        public_id: address
        for public_id, address in session.exec(
            select(Contact.public_id, Contact.address).where(col(Contact.public_id).in_(public_ids))
        )
        if address is not None
    }
    views = []
    for row in rows:
        contact_id = row.payload.get("contact_id")
        address = addresses.get(str(contact_id)) if contact_id else row.payload.get("to")
        views.append(
            QueuedView(
                message_id=row.message_id,
                kind=row.kind,
                template=str(row.payload.get("template", "")),
                recipient=mask_address(address) if isinstance(address, str) else "",
                status=row.status,
                attempts=row.attempts,
                created_at=row.created_at,
                due_at=row.due_at if row.status == OutboxStatus.QUEUED else None,
                finished_at=row.finished_at,
                last_error=row.last_error,
            )
        )
    return views


def maildir_mail(mail: MailConfig | None, key: str) -> MailText:
    maildir = maildir_of(mail)
    found = read_mail(maildir, key) if maildir is not None else None
    if found is None:
        raise MailNotFound("There is no such mail in the Maildir (any more).")
    return found
