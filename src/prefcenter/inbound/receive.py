"""Use cases of the ESP routes, one per ESP: check the sender's signature before anything is
read from the database, read its events, and record them in one transaction of their own.

Everything the routes need that is built once per process (the SendGrid key, the SNS
certificates, the group map) is `InboundState`, kept in the app's state; the certificate
fetcher and the subscription confirmer in it are plain functions, so tests hand in theirs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import Session

from prefcenter.audit.context import RequestContext
from prefcenter.audit.keys import AuditKeys
from prefcenter.db import Database
from prefcenter.inbound import mailgun, postmark, sendgrid, ses, sns
from prefcenter.inbound.errors import InboundNotConfigured, NotAcceptable
from prefcenter.inbound.events import Action, InboundEvent, receipt_key
from prefcenter.inbound.mailbox import unsubscribe_by_mail
from prefcenter.inbound.models import RECEIPT_RETENTION
from prefcenter.inbound.receipts import claim_receipts, forget_receipts
from prefcenter.inbound.schemas import InboundReport, MailOutcome, MailReport
from prefcenter.inbound.service import record_events
from prefcenter.settings import Settings, SigningKey

logger = logging.getLogger(__name__)

# How often a process deletes receipts past their retention (in a delivery's transaction).
FORGET_EVERY_S = 3600.0


@dataclass
class InboundState:
    settings: Settings
    sendgrid_key: ec.EllipticCurvePublicKey | None
    sendgrid_groups: dict[int, str]
    ses_topics: frozenset[str]
    certificates: sns.SigningCertificates
    confirm: Callable[[str], None]  # visits a checked SubscribeURL
    _next_forget: float = 0.0
    _forget_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        fetch: sns.CertificateFetcher = sns.fetch_over_https,
        confirm: Callable[[str], None] = sns.get_over_https,
    ) -> InboundState:
        """Fails at once (ConfigError) on a SendGrid key or group map that cannot work."""
        key = settings.sendgrid_public_key
        return cls(
            settings=settings,
            sendgrid_key=sendgrid.load_public_key(key) if key else None,
            sendgrid_groups=settings.sendgrid_groups(),
            ses_topics=settings.ses_topics(),
            certificates=sns.SigningCertificates(fetch),
            confirm=confirm,
        )

    @property
    def tolerance(self) -> timedelta:
        return timedelta(seconds=self.settings.inbound_timestamp_tolerance_s)

    def forget_is_due(self) -> bool:
        """Whether the next `forget_due` would say True (and the delivery delete old
        receipts), without taking the turn: the SNS lane leaves that delivery to the route."""
        return time.monotonic() >= self._next_forget

    def forget_due(self) -> bool:
        """True once an hour per process: this delivery also deletes old receipts."""
        now = time.monotonic()
        with self._forget_lock:
            if now < self._next_forget:
                return False
            self._next_forget = now + FORGET_EVERY_S
            return True


def _nothing_to_record(events: Sequence[InboundEvent]) -> InboundReport | None:
    """The report of a delivery of ignored events only (deliveries, opens: most of them),
    answered without a transaction; None when there is something to record."""
    if any(e.action is not Action.IGNORED for e in events):
        return None
    return InboundReport(
        events=len(events), recorded=0, duplicates=0, ignored=len(events), unknown_addresses=0
    )


def _record(
    session: Session,
    state: InboundState,
    events: Sequence[InboundEvent],
    *,
    keys: AuditKeys,
    now: datetime,
) -> InboundReport:
    if state.forget_due():
        forget_receipts(session, before=now - RECEIPT_RETENTION)
    return record_events(session, events, settings=state.settings, keys=keys, now=now)


def receive_sendgrid(
    database: Database,
    state: InboundState,
    body: bytes,
    *,
    signature: str | None,
    timestamp: str | None,
    keys: AuditKeys,
    now: datetime,
) -> InboundReport:
    if state.sendgrid_key is None:
        raise InboundNotConfigured("Not found.")
    sendgrid.verify(
        state.sendgrid_key,
        body,
        signature=signature,
        timestamp=timestamp,
        now=now,
        tolerance=state.tolerance,
    )
    events = sendgrid.read_events(body, groups=state.sendgrid_groups, now=now)
    if (ignored := _nothing_to_record(events)) is not None:
        return ignored
    with database.transaction(write=True) as session:
        return _record(session, state, events, keys=keys, now=now)


def receive_mailgun(
    database: Database, state: InboundState, body: bytes, *, keys: AuditKeys, now: datetime
) -> InboundReport:
    signing_key = state.settings.mailgun_signing_key
    if signing_key is None:
        raise InboundNotConfigured("Not found.")
    token, payload = mailgun.verify(signing_key, body, now=now, tolerance=state.tolerance)
    delivery = mailgun.read_event(payload, token, now=now)
    with database.transaction(write=True) as session:
        replay = receipt_key(mailgun.SIGNATURE_RECEIPTS, delivery.token)
        if not claim_receipts(session, {replay: mailgun.SIGNATURE_RECEIPTS}, now=now):
            raise NotAcceptable("This signature's token was used before: a replay.")
        return _record(session, state, [delivery.event], keys=keys, now=now)


def receive_postmark(
    database: Database,
    state: InboundState,
    body: bytes,
    *,
    authorization: str | None,
    keys: AuditKeys,
    now: datetime,
) -> InboundReport:
    user = state.settings.postmark_webhook_user
    password = state.settings.postmark_webhook_password
    if user is None or password is None:
        raise InboundNotConfigured("Not found.")
    postmark.verify(authorization, user=user, password=password)
    event = postmark.read_event(body, now=now)
    if (ignored := _nothing_to_record([event])) is not None:
        return ignored
    with database.transaction(write=True) as session:
        return _record(session, state, [event], keys=keys, now=now)


@dataclass(frozen=True, slots=True)
class SesDelivery:
    """A verified SNS message and what it carries: an SES notification's events, a message
    SES received, or None (a subscription's confirmation or end)."""

    message: sns.SnsMessage
    notification: list[InboundEvent] | ses.ReceivedMail | None


def read_ses(state: InboundState, body: bytes, *, now: datetime, fetch: bool = True) -> SesDelivery:
    """Read and verify an SNS message. With `fetch=False` (on the event loop) a signing
    certificate not cached yet raises sns.CertificateNotCached instead of being fetched."""
    if not state.ses_topics:
        raise InboundNotConfigured("Not found.")
    message = sns.read_message(body)
    sns.verify(
        message,
        topics=state.ses_topics,
        certificates=state.certificates,
        now=now,
        tolerance=state.tolerance,
        fetch=fetch,
    )
    if message.type != "Notification":
        return SesDelivery(message, None)
    return SesDelivery(message, ses.read_notification(message, now=now))


def answer_at_once(delivery: SesDelivery) -> InboundReport | None:
    """The report of a notification of ignored events only (deliveries, opens: most of
    them), which needs neither the database nor the network; else None."""
    if isinstance(delivery.notification, list):
        return _nothing_to_record(delivery.notification)
    return None


def record_ses(
    database: Database,
    state: InboundState,
    delivery: SesDelivery,
    *,
    ring: tuple[SigningKey, ...],
    keys: AuditKeys,
    now: datetime,
) -> InboundReport:
    """What a verified SNS message does: a subscription confirmed, or an SES notification's
    events recorded (bounces, complaints, or a message SES received for the unsubscribe
    mailbox)."""
    message, notification = delivery.message, delivery.notification
    if notification is None:
        if message.type == "SubscriptionConfirmation":
            sns.confirm_subscription(message, get=state.confirm)
            logger.info("confirmed the SNS subscription to an allowed topic")
        else:
            # Not resubscribed on our own: someone unsubscribed this endpoint on purpose.
            logger.warning("SNS says this endpoint was unsubscribed from an allowed topic")
        return InboundReport(events=0, recorded=0, duplicates=0, ignored=0, unknown_addresses=0)
    if (answer := answer_at_once(delivery)) is not None:
        return answer
    with database.transaction(write=True) as session:
        if isinstance(notification, ses.ReceivedMail):
            return _received_mail(session, notification, ring=ring, now=now)
        return _record(session, state, notification, keys=keys, now=now)


def receive_ses(
    database: Database,
    state: InboundState,
    body: bytes,
    *,
    ring: tuple[SigningKey, ...],
    keys: AuditKeys,
    now: datetime,
) -> InboundReport:
    """An SNS message, read, verified (its certificate fetched if need be) and recorded."""
    delivery = read_ses(state, body, now=now)
    return record_ses(database, state, delivery, ring=ring, keys=keys, now=now)


def _received_mail(
    session: Session, mail: ses.ReceivedMail, *, ring: tuple[SigningKey, ...], now: datetime
) -> InboundReport:
    key = receipt_key("ses", mail.receipt)
    if not claim_receipts(session, {key: "ses"}, now=now):
        return InboundReport(events=1, recorded=0, duplicates=1, ignored=0, unknown_addresses=0)
    outcome = unsubscribe_by_mail(
        session, mail.raw, ring=ring, request=RequestContext(None, None, None), now=now
    )
    done = outcome.outcome is MailOutcome.UNSUBSCRIBED
    return InboundReport(
        events=1, recorded=int(done), duplicates=0, ignored=int(not done), unknown_addresses=0
    )


def receive_mail(
    database: Database,
    raw: bytes,
    *,
    ring: tuple[SigningKey, ...],
    request: RequestContext,
    now: datetime,
) -> MailReport:
    """A message sent to the unsubscribe mailbox (`POST /v1/inbound/email`, `prefcenter
    inbound-mail`)."""
    with database.transaction(write=True) as session:
        return unsubscribe_by_mail(session, raw, ring=ring, request=request, now=now)
