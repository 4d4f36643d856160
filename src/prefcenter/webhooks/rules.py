"""Pure rules of outgoing webhooks: the event types and which audit events make them, which
URLs and addresses may be called, how a delivery is signed (Standard Webhooks v1), and what a
receiver's answer means."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import ipaddress
import secrets
from datetime import datetime, timedelta
from enum import StrEnum
from urllib.parse import SplitResult, urlsplit

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class EventType(StrEnum):
    """The types an endpoint may subscribe to. Persisted: values are only ever added."""

    CONSENT_CHANGED = "consent.changed"
    CONTACT_SUPPRESSED = "contact.suppressed"
    CONTACT_ERASED = "contact.erased"
    CONTACT_BOUNCED = "contact.bounced"
    CONTACT_COMPLAINED = "contact.complained"
    IMPORT_FINISHED = "import.finished"
    NOTICE_PUBLISHED = "notice.published"
    # A recipient of a notice run the team sends itself (`"delivery": "webhooks"`).
    NOTICE_RECIPIENT = "notice.recipient"


# Subscribes to every type, those added later included.
EVERY_TYPE = "*"

# Audit event kinds (audit.schemas.EventKind values) and the webhook types they make.
_CONSENT_KINDS = frozenset({"consent_change", "global_consent_change"})
_ERASURE_KIND = "erasure"


def types_of_event(kind: str, *, outcome: str, to_status: str | None) -> tuple[EventType, ...]:
    """The webhook types an audit event makes, in the order they are delivered: every consent
    change is `consent.changed`; a contact-wide opt-out that took effect is also
    `contact.suppressed`; an erasure is `contact.erased`."""
    if kind in _CONSENT_KINDS:
        if kind == "global_consent_change" and outcome == "applied" and to_status == "unsubscribed":
            return (EventType.CONSENT_CHANGED, EventType.CONTACT_SUPPRESSED)
        return (EventType.CONSENT_CHANGED,)
    if kind == _ERASURE_KIND:
        return (EventType.CONTACT_ERASED,)
    return ()


def webhook_id_of(event_id: str, event_type: EventType) -> str:
    """The `webhook-id` of the delivery of an audit event as a type: the same on every retry
    and every replay, so that receivers can deduplicate."""
    return f"msg_{event_id}.{event_type.value}"


# --- where deliveries may go --------------------------------------------------------------

MAX_URL_LENGTH = 2000


class UrlRefused(ValueError):
    """A URL deliveries may not go to; the message says why."""


def check_url(url: str) -> SplitResult:
    """An endpoint URL: http or https, a host, no user name or password (they would be sent
    in the clear in logs and to every redirect target), no fragment, at most 2000 characters."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"is longer than {MAX_URL_LENGTH} characters")
    if any(ord(ch) <= 32 or ord(ch) == 127 for ch in url):
        raise UrlRefused("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise UrlRefused("must start with http:// or https://")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UrlRefused("must not carry a user name or password; authenticate by signature")
    if not parts.hostname:
        raise UrlRefused("must name a host")
    if parts.fragment or url.endswith("#"):
        raise UrlRefused("must not have a #fragment")
    if port == 0:
        raise UrlRefused("must not use port 0")
    return parts


# Answer cloud metadata services although some have global addresses, and the IETF protocol
# block that holds others (192.0.0.0/24).
_METADATA = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack, DigitalOcean …
        "169.254.170.2/32",  # AWS ECS task credentials
        "168.63.129.16/32",  # Azure wire server
        "100.100.100.200/32",  # Alibaba Cloud
        "192.0.0.0/24",  # Oracle Cloud (192.0.0.192) and other IETF protocol assignments
        "fd00:ec2::/64",  # AWS over IPv6 (fd00:ec2::254)
    )
)
# IPv6 prefixes that carry an IPv4 address a gateway will connect to.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def address_refusal(address: IpAddress) -> str | None:
    """Why deliveries may not connect to `address` (None: they may): loopback, private,
    link-local, shared (CGNAT), multicast, unspecified, reserved or a cloud metadata address,
    also when wrapped in IPv6 (IPv4-mapped, NAT64, 6to4)."""
    if isinstance(address, ipaddress.IPv6Address):
        inner: ipaddress.IPv4Address | None = address.ipv4_mapped or address.sixtofour
        if inner is None and any(address in net for net in _NAT64):
            inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if inner is not None:
            why = address_refusal(inner)
            return f"{why} (inside {address})" if why else None
    if any(address.version == net.version and address in net for net in _METADATA):
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "a shared (CGNAT) address"
    if address.is_private:
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved address"
    return None


# --- signing ------------------------------------------------------------------------------

SECRET_PREFIX = "whsec_"  # noqa: S105  (a prefix, not a secret)
SECRET_BYTES = 32
# How long the secret before a rotation keeps signing beside the new one.
ROTATION_OVERLAP = timedelta(hours=24)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret: the base64-decoded bytes after the prefix."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)


def signature(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.digest(key, signed, hashlib.sha256)).decode("ascii")


def signature_header(keys: list[bytes], webhook_id: str, timestamp: int, body: bytes) -> str:
    """One signature per secret that signs, space-separated (the newest first)."""
    return " ".join(signature(key, webhook_id, timestamp, body) for key in keys)


# --- what an answer means -----------------------------------------------------------------


class Answer(StrEnum):
    DELIVERED = "delivered"  # 2xx
    GONE = "gone"  # 410: the receiver asks for no more; the endpoint is disabled
    RETRY = "retry"  # anything else: tried again on the schedule


def answer_of(status_code: int) -> Answer:
    if 200 <= status_code < 300:
        return Answer.DELIVERED
    if status_code == 410:
        return Answer.GONE
    return Answer.RETRY


# `Retry-After` is believed only on these, and for at most a day.
RETRY_AFTER_STATUSES = frozenset({429, 503})
MAX_RETRY_AFTER = timedelta(hours=24)


def retry_after(status_code: int, value: str | None, *, now: datetime) -> datetime | None:
    """When a 429 or 503 asks to be tried again (`Retry-After` in seconds or as an HTTP date),
    capped at a day; None when there is no such header or it makes no sense."""
    if status_code not in RETRY_AFTER_STATUSES or not value:
        return None
    value = value.strip()
    if value.isdigit():
        delay = timedelta(seconds=int(value[:9]))
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        delay = when - now
    if delay <= timedelta(0):
        return None
    return now + min(delay, MAX_RETRY_AFTER)


# An endpoint whose every attempt has failed this long is disabled.
FAILING_LIMIT = timedelta(days=5)


def failing_too_long(failing_since: datetime | None, now: datetime) -> bool:
    return failing_since is not None and now - failing_since >= FAILING_LIMIT
