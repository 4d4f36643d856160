"""Owns reading a message sent to the `mailto:` of List-Unsubscribe (RFC 2369): whether it is
one a person sent (auto-replies, delivery reports and bounces are not), and the tokens it
carries: in the subject, as `List-Unsubscribe` puts it there (`unsubscribe <token>`), or as
the `+tag` of the address it was sent to (`unsubscribe+<token>@…`).

Pure: raw bytes in, a verdict out. Nothing of the message is kept but its `Message-ID` and
whether its sender is the contact's address; nothing of it is logged.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from email.errors import MessageError
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses, parseaddr
from enum import StrEnum
from urllib.parse import unquote

from prefcenter.contacts.addresses import InvalidAddress, parse_address
from prefcenter.tokens import MAX_TOKEN_LENGTH

# A token as tokens.sign_token writes it: version, key id, payload, tag (base64url).
_SIGNED_LINK = r"[12]\.[A-Za-z0-9]{1,16}\.[A-Za-z0-9_-]{1,900}\.[A-Za-z0-9_-]{16,64}"
_SUBJECT_TOKEN = re.compile(rf"unsubscribe\s+({_SIGNED_LINK})(?![A-Za-z0-9_.-])", re.IGNORECASE)
_TAG_TOKEN = re.compile(rf"\+({_SIGNED_LINK})$")
_RECIPIENT_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "To", "Cc")
_AUTOMATED_PRECEDENCE = frozenset({"auto_reply", "bulk", "junk", "list"})
_REPORT_TYPES = frozenset({"multipart/report", "message/delivery-status"})
_DAEMONS = frozenset({"mailer-daemon", "postmaster"})
MAX_CANDIDATES = 8
MAX_HEADER_CHARS = 4096


class NotAPersonsMail(StrEnum):
    """Why a message is not acted on (MailReport.reason)."""

    AUTO_REPLY = "auto_reply"
    DELIVERY_REPORT = "delivery_report"
    EMPTY_RETURN_PATH = "empty_return_path"
    NO_TOKEN = "no_token"  # noqa: S105  (a reason, not a secret)
    UNREADABLE = "unreadable"


@dataclass(frozen=True, slots=True)
class UnsubscribeMail:
    tokens: tuple[str, ...]  # the candidates, subject first; the first that verifies counts
    message_id: str | None
    sender: str | None  # the normalised From address, compared with the contact's


def _header(message: Message, name: str) -> str:
    raw = message.get(name)
    if raw is None:
        return ""
    try:
        text = str(make_header(decode_header(str(raw))))
    except (MessageError, UnicodeError, LookupError, ValueError):
        text = str(raw)
    return text[:MAX_HEADER_CHARS]


def _automated(message: Message) -> NotAPersonsMail | None:
    """RFC 3834 auto-replies, delivery and read reports (RFC 3464, 8098), and bounces (an
    empty return path, RFC 5321 §4.5.5): a person asks nothing by them."""
    auto_submitted = _header(message, "Auto-Submitted").strip().lower()
    if auto_submitted and not auto_submitted.startswith("no"):
        return NotAPersonsMail.AUTO_REPLY
    if (
        _header(message, "Precedence").strip().lower() in _AUTOMATED_PRECEDENCE
        or message.get("X-Autoreply") is not None
        or message.get("X-Autorespond") is not None
    ):
        return NotAPersonsMail.AUTO_REPLY
    if message.get_content_type() in _REPORT_TYPES:
        return NotAPersonsMail.DELIVERY_REPORT
    sender = parseaddr(_header(message, "From"))[1]
    if sender.rpartition("@")[0].lower() in _DAEMONS:
        return NotAPersonsMail.DELIVERY_REPORT
    return_path = message.get_all("Return-Path") or []
    if any(str(value).strip() in ("<>", "") for value in return_path):
        return NotAPersonsMail.EMPTY_RETURN_PATH
    return None


def _tokens(message: Message) -> tuple[str, ...]:
    subject = _header(message, "Subject")
    found = [m.group(1) for m in _SUBJECT_TOKEN.finditer(subject)]
    if "%" in subject:
        # A client that put the subject of the mailto: URL in as written, still escaped.
        found += [m.group(1) for m in _SUBJECT_TOKEN.finditer(unquote(subject))]
    for name in _RECIPIENT_HEADERS:
        values = [_header(message, name)] if message.get(name) is not None else []
        for _, address in getaddresses(values):
            local = address.rpartition("@")[0]
            match = _TAG_TOKEN.search(local)
            if match:
                found.append(match.group(1))
    unique = dict.fromkeys(t for t in found if len(t) <= MAX_TOKEN_LENGTH)
    return tuple(unique)[:MAX_CANDIDATES]


def _sender(message: Message) -> str | None:
    address = parseaddr(_header(message, "From"))[1]
    try:
        return parse_address(address).normalised if address else None
    except InvalidAddress:
        return None


def read_mail(raw: bytes) -> UnsubscribeMail | NotAPersonsMail:
    """What a message asks for: an unsubscribe with its token candidates, or why not."""
    try:
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
    except (MessageError, ValueError, UnicodeError):
        return NotAPersonsMail.UNREADABLE
    automated = _automated(message)
    if automated is not None:
        return automated
    tokens = _tokens(message)
    if not tokens:
        return NotAPersonsMail.NO_TOKEN
    message_id = _header(message, "Message-ID").strip()[:998] or None
    return UnsubscribeMail(tokens=tokens, message_id=message_id, sender=_sender(message))
