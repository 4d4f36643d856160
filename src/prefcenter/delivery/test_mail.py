"""Owns the test mail of `prefcenter mail test ADDRESS`: queued like any mail, to an address
that need not be a contact's."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session

from prefcenter.mail.config import MailConfig, new_message_id
from prefcenter.mail.schemas import MailPayload, MailTemplate
from prefcenter.outbox.schemas import OutboxKind
from prefcenter.outbox.service import enqueue


@dataclass(frozen=True, slots=True)
class QueuedMail:
    id: int
    message_id: str


def queue_test_mail(
    session: Session, mail: MailConfig, *, recipient: str, now: datetime
) -> QueuedMail:
    message_id = new_message_id(mail)
    row = enqueue(
        session,
        kind=OutboxKind.MAIL,
        message_id=message_id,
        payload=MailPayload(template=MailTemplate.TEST, to=recipient).model_dump(
            mode="json", exclude_none=True
        ),
        now=now,
    )
    assert row.id is not None
    return QueuedMail(id=row.id, message_id=message_id)
