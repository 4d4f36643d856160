"""Owns what an ESP's event comes down to here, whichever ESP sent it: a hard or soft bounce,
a complaint, an unsubscribe, or something to ignore; and the reading of its parts (times,
addresses, ids) that every ESP's payload needs.

Pure: payloads in, events out; no database, no clock of its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parseaddr
from enum import StrEnum
from typing import Any

import orjson

from prefcenter.contacts.addresses import InvalidAddress, parse_address

# What the evidence keeps of an ESP's free text (a diagnostic, a reason): enough to read.
MAX_EVIDENCE_TEXT = 500


class Provider(StrEnum):
    SES = "ses"
    SENDGRID = "sendgrid"
    MAILGUN = "mailgun"
    POSTMARK = "postmark"


class Action(StrEnum):
    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE = "soft_bounce"
    COMPLAINT = "complaint"  # the person marked a message as spam: their own opt-out
    UNSUBSCRIBE = "unsubscribe"  # the person unsubscribed at the ESP (esp_unsubscribe)
    IGNORED = "ignored"  # delivered, opened, clicked, deferred, or a type we do not know


@dataclass(frozen=True, slots=True)
class InboundEvent:
    provider: Provider
    # The ESP's id of what it sent (an event id, an SNS MessageId): the same event delivered
    # again has the same one, and changes nothing the second time.
    receipt: str
    action: Action
    address: str | None  # as the ESP wrote it
    occurred_at: datetime  # as the ESP dates it
    # An unsubscribe from these topics only; None: from all marketing.
    topics: tuple[str, ...] | None = None
    # The ESP's event as the trail keeps it (its type, its id, its diagnostic).
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def receipt_key(self) -> str:
        return receipt_key(self.provider.value, self.receipt)


def receipt_key(provider: str, receipt: str) -> str:
    """What `inbound_receipt` stores for an id: fixed in size, and no address in it."""
    return hashlib.sha256(f"{provider}\n{receipt}".encode()).hexdigest()


def content_id(value: Any) -> str:
    """An id for an event that carries none of its own: the hash of its content, so that the
    same event delivered again gets the same id."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


def normalised_address(text: str | None) -> str | None:
    """The address an ESP names, normalised as contacts are matched; None when it is no
    address (`Name <a@b>` is taken for `a@b`)."""
    if not isinstance(text, str) or not text.strip():
        return None
    candidate = text.strip()
    if "<" in candidate:
        candidate = parseaddr(candidate)[1]
    try:
        return parse_address(candidate).normalised
    except InvalidAddress:
        return None


def iso_time(value: Any, *, default: datetime) -> datetime:
    """An ESP's RFC 3339 time; `default` (when it was received) if absent or unreadable."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            return default
        return parsed.astimezone(UTC) if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return default


def unix_time(value: Any, *, default: datetime) -> datetime:
    """An ESP's Unix time in seconds (an int, a float or their text)."""
    try:
        seconds = float(value)
        return datetime.fromtimestamp(seconds, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return default


def text_of(value: Any) -> str | None:
    """A short printable text for the evidence, or None."""
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value)
    if not text.isprintable():  # most are: no walk through them character by character
        text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text[:MAX_EVIDENCE_TEXT]


def evidence_of(provider: Provider, receipt: str, kind: str, **fields: Any) -> dict[str, Any]:
    """The evidence document of an ESP's event: which ESP, its id and type, and the fields
    worth keeping (None dropped)."""
    document: dict[str, Any] = {"esp": provider.value, "esp_event_id": receipt, "type": kind}
    for name, value in fields.items():
        text = text_of(value)
        if text is not None:
            document[name] = text
    return document
