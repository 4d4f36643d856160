"""Use case of the unsubscribe mailbox: a message sent to the `mailto:` of List-Unsubscribe
unsubscribes as a one-click does (the token's topic, or all marketing), with source `mailto`
and the message's `Message-ID` as evidence. A message without a valid token changes nothing
and is logged without its content."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlmodel import Session

from prefcenter.audit.context import RequestContext
from prefcenter.contacts.service import find_contact_by_public_id
from prefcenter.inbound.events import receipt_key
from prefcenter.inbound.mailto import NotAPersonsMail, UnsubscribeMail, read_mail
from prefcenter.inbound.receipts import claim_receipts
from prefcenter.inbound.schemas import MailOutcome, MailReport
from prefcenter.preference_center.errors import InvalidLink
from prefcenter.preference_center.service import Channel, unsubscribe
from prefcenter.settings import SigningKey
from prefcenter.tokens import TokenError, TokenPurpose, VerifiedToken, verify_token

logger = logging.getLogger(__name__)

MAILTO_RECEIPTS = "mailto"


def _verified(
    ring: tuple[SigningKey, ...], mail: UnsubscribeMail, now: datetime
) -> VerifiedToken | None:
    """The first candidate that is an unsubscribe token (or a version-1 link's token, as
    mailed before): `verify_token` checks the MAC before it decodes anything."""
    for token in mail.tokens:
        try:
            return verify_token(ring, TokenPurpose.UNSUBSCRIBE, token, now=now)
        except TokenError:
            continue
    return None


def unsubscribe_by_mail(
    session: Session,
    raw: bytes,
    *,
    ring: tuple[SigningKey, ...],
    request: RequestContext,
    now: datetime,
) -> MailReport:
    """Read the message and act on it in the caller's transaction. The same message (by
    `Message-ID`) delivered again changes nothing the second time."""
    mail = read_mail(raw)
    if isinstance(mail, NotAPersonsMail):
        logger.info("unsubscribe mail ignored: %s", mail.value)
        return MailReport(outcome=MailOutcome.IGNORED, reason=mail.value)
    verified = _verified(ring, mail, now)
    if verified is None:
        logger.info("unsubscribe mail ignored: no valid token (%d candidates)", len(mail.tokens))
        return MailReport(outcome=MailOutcome.IGNORED, reason="invalid_token")
    if mail.message_id is not None:
        key = receipt_key(MAILTO_RECEIPTS, mail.message_id)
        if not claim_receipts(session, {key: MAILTO_RECEIPTS}, now=now):
            return MailReport(outcome=MailOutcome.IGNORED, reason="duplicate")
    contact = find_contact_by_public_id(session, verified.claims.contact_id)
    evidence: dict[str, object] = {"message_id": mail.message_id}
    if contact is not None and contact.address is not None:
        evidence["from_contact_address"] = mail.sender == contact.address
    try:
        unsubscribe(
            session,
            verified,
            channel=Channel.MAILTO,
            request=request,
            now=now,
            evidence=evidence,
        )
    except InvalidLink:
        logger.info("unsubscribe mail ignored: the token's contact is gone")
        return MailReport(outcome=MailOutcome.IGNORED, reason="unknown_contact")
    return MailReport(outcome=MailOutcome.UNSUBSCRIBED)
