"""Owns reading a Maildir back for the console's "Outgoing mail" page: the newest mails' headers,
and one mail's text part. Reads only files the Maildir lists; a key is never a path."""

from __future__ import annotations

import mailbox
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from pathlib import Path

from prefcenter.contacts.service import mask_address

MAX_KEY_LENGTH = 200
# What the page shows of a text part at most.
MAX_TEXT_CHARS = 100_000


@dataclass(frozen=True, slots=True)
class MailSummary:
    key: str
    subject: str
    recipient: str  # masked
    date: datetime | None
    message_id: str


@dataclass(frozen=True, slots=True)
class MailText:
    summary: MailSummary
    text: str


def newest_mail(path: Path, *, limit: int) -> list[MailSummary]:
    """The `limit` newest mails (by file time), newest first; none if there is no Maildir."""
    found: list[tuple[float, str, Path]] = []
    for sub in ("new", "cur"):
        try:
            entries = list(os.scandir(path / sub))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            try:
                found.append((entry.stat().st_mtime, entry.name, Path(entry.path)))
            except FileNotFoundError:
                continue  # moved or deleted since the listing
    found.sort(reverse=True)
    summaries = []
    for _, name, file_path in found[:limit]:
        try:
            with file_path.open("rb") as handle:
                headers = BytesParser(policy=policy.default).parse(handle, headersonly=True)
        except FileNotFoundError:
            continue
        assert isinstance(headers, EmailMessage)
        summaries.append(_summary(name.split(":", 1)[0], headers))
    return summaries


def read_mail(path: Path, key: str) -> MailText | None:
    """One mail's headers and text part; None for a key the Maildir does not hold."""
    if not key or len(key) > MAX_KEY_LENGTH or "/" in key or key.startswith("."):
        return None
    try:
        box = mailbox.Maildir(path, factory=None, create=False)
        with box.get_file(key) as handle:
            raw = handle.read()
        message = BytesParser(policy=policy.default).parsebytes(raw)
    except (KeyError, FileNotFoundError, mailbox.NoSuchMailboxError):
        return None
    assert isinstance(message, EmailMessage)
    body = message.get_body(preferencelist=("plain",))
    text = body.get_content() if body is not None else ""
    return MailText(summary=_summary(key, message), text=str(text)[:MAX_TEXT_CHARS])


def _summary(key: str, headers: EmailMessage) -> MailSummary:
    date: datetime | None = None
    raw_date = headers.get("Date")
    if raw_date:
        try:
            date = parsedate_to_datetime(str(raw_date)).astimezone(UTC)
        except (TypeError, ValueError):
            date = None
    recipient = str(headers.get("To", ""))
    return MailSummary(
        key=key,
        subject=str(headers.get("Subject", "")),
        recipient=mask_address(recipient) if "@" in recipient else recipient,
        date=date,
        message_id=str(headers.get("Message-ID", "")),
    )
