"""Owns the signed token format: `<version>.<kid>.<payload>.<tag>`, base64url, HMAC-SHA256,
and the recipient URLs that carry tokens.

Pure code: no database, no clock of its own. A token carries the contact's opaque public id
(never the address, never a row id), the topic or none for "all", an optional campaign id and
the issue time. The purpose is inside the MAC, so a token of one purpose never works as another.

Version 2 gives the `List-Unsubscribe`/`/u` link its own purpose (UNSUBSCRIBE), which only
unsubscribes; the preference link keeps MANAGE. Version 1 had one MANAGE token behind both
links: those already mailed keep working, on `/u` (where they can only unsubscribe) and on `/p`.
It sits below consent and links, which both make tokens (a confirmation link; mail links).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from prefcenter.plain_text import is_plain_text
from prefcenter.settings import SigningKey

VERSION = "2"
# Tokens issued before purposes were split: one MANAGE token for both /u and /p.
LEGACY_VERSION = "1"
TAG_BYTES = 16  # HMAC-SHA256 truncated to 128 bits
# Longer than any token we issue (campaign ids are at most 200 characters): anything longer
# is refused before it is decoded or reaches the database.
MAX_TOKEN_LENGTH = 1024


class TokenPurpose(StrEnum):
    UNSUBSCRIBE = "unsubscribe"  # `/u` and List-Unsubscribe: only ever unsubscribes; reusable
    MANAGE = "manage"  # the preference center `/p`: reusable, no expiry
    CONFIRM = "confirm"  # a confirmation from the mailbox (`/c`): expires
    # Turning back on what the person refused, from the mailbox (`/c`): expires in 48 hours.
    RESUBSCRIBE = "resubscribe"


class TokenError(Exception):
    """Why a token was refused. Never says anything about the contact."""


class MalformedToken(TokenError):
    pass


class UnknownKey(TokenError):
    pass


class RetiredKey(UnknownKey):
    """Signed with a key the operator retired (PREFCENTER_RETIRED_SIGNING_KEYS): the link was
    genuine once and has expired. Its MAC is not checked (the secret is gone), so this says
    nothing more than "unknown key" would, to anyone who made the token up."""


class BadSignature(TokenError):
    pass


class ExpiredToken(TokenError):
    pass


@dataclass(frozen=True, slots=True)
class TokenClaims:
    contact_id: str
    topic: str | None  # None: all marketing
    campaign_id: str | None
    issued_at: datetime
    # For confirmation tokens: the audit event that put the subscription in `pending`, so that
    # a confirmation link stops working once the state has moved on.
    pending_event: str | None = None


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    purpose: TokenPurpose
    kid: str
    claims: TokenClaims


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not _B64_TEXT.fullmatch(text):
        raise MalformedToken("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedToken("not base64url") from exc


_B64_TEXT = re.compile("[A-Za-z0-9_-]+")


def _tag(key: SigningKey, purpose: TokenPurpose, signed_part: str) -> bytes:
    message = f"prefcenter-token|{purpose.value}|{signed_part}".encode("ascii")
    return hmac.new(key.secret, message, hashlib.sha256).digest()[:TAG_BYTES]


def sign_token(ring: tuple[SigningKey, ...], purpose: TokenPurpose, claims: TokenClaims) -> str:
    """Sign with the first key of the ring."""
    key = ring[0]
    body: dict[str, object] = {"c": claims.contact_id, "i": int(claims.issued_at.timestamp())}
    if claims.topic is not None:
        body["t"] = claims.topic
    if claims.campaign_id is not None:
        body["m"] = claims.campaign_id
    if claims.pending_event is not None:
        body["e"] = claims.pending_event
    payload = _b64encode(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())
    signed_part = f"{VERSION}.{key.kid}.{payload}"
    return f"{signed_part}.{_b64encode(_tag(key, purpose, signed_part))}"


def _claims(payload: bytes) -> TokenClaims:
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedToken("payload is not JSON") from exc
    if not isinstance(body, dict):
        raise MalformedToken("payload is not an object")
    contact_id, issued, topic = body.get("c"), body.get("i"), body.get("t")
    campaign, pending = body.get("m"), body.get("e")
    if not isinstance(contact_id, str) or not isinstance(issued, int) or isinstance(issued, bool):
        raise MalformedToken("payload lacks contact or time")
    for optional in (topic, campaign, pending):
        if optional is not None and not isinstance(optional, str):
            raise MalformedToken("payload field of the wrong type")
    for text in (contact_id, topic, campaign, pending):
        if text is not None and not is_plain_text(text):
            raise MalformedToken("payload field is not plain text")
    try:
        issued_at = datetime.fromtimestamp(issued, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise MalformedToken("issue time out of range") from exc
    return TokenClaims(
        contact_id=contact_id,
        topic=topic,
        campaign_id=campaign,
        issued_at=issued_at,
        pending_event=pending,
    )


def verify_token(
    ring: tuple[SigningKey, ...],
    purpose: TokenPurpose,
    token: str,
    *,
    now: datetime,
    max_age: timedelta | None = None,
    retired: frozenset[str] = frozenset(),
) -> VerifiedToken:
    """Check format, key, MAC (in constant time) and, when `max_age` is given, age. A key id
    not in the ring raises RetiredKey when it is in `retired`, UnknownKey otherwise.

    The MAC is checked before the payload is parsed: nothing an attacker made up gets decoded.
    """
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        raise MalformedToken("too long or not ASCII")
    parts = token.split(".")
    if len(parts) != 4:
        raise MalformedToken("not four parts")
    version, kid, payload_text, tag_text = parts
    if version not in (VERSION, LEGACY_VERSION):
        raise MalformedToken("unknown version")
    signed_purpose = purpose
    if version == LEGACY_VERSION and purpose is TokenPurpose.UNSUBSCRIBE:
        # A version-1 link already mailed: its MANAGE token was the unsubscribe link too. The
        # version is inside the MAC, so a version-2 MANAGE token cannot pass for one.
        signed_purpose = TokenPurpose.MANAGE
    key = next((k for k in ring if hmac.compare_digest(k.kid, kid)), None)
    if key is None:
        if kid in retired:
            raise RetiredKey("retired key id")
        raise UnknownKey("unknown key id")
    # Compare the text, not decoded bytes: base64 has several spellings of the same bytes (the
    # unused low bits of the last character), and only the one we issued is valid.
    expected = _b64encode(_tag(key, signed_purpose, f"{version}.{kid}.{payload_text}"))
    if not hmac.compare_digest(tag_text, expected):
        raise BadSignature("signature does not match")
    claims = _claims(_b64decode(payload_text))
    if max_age is not None and now - claims.issued_at > max_age:
        raise ExpiredToken("expired")
    return VerifiedToken(purpose=purpose, kid=key.kid, claims=claims)


def unsubscribe_url(base_url: str, token: str) -> str:
    return f"{base_url}/u/{token}"


def preferences_url(base_url: str, token: str) -> str:
    return f"{base_url}/p/{token}"


def confirm_url(base_url: str, token: str) -> str:
    return f"{base_url}/c/{token}"
