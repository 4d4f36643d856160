"""Owns Amazon SNS's side of SES notifications: checking a message's signature
(SignatureVersion 1: SHA1withRSA, 2: SHA256withRSA, over the documented string to sign) with
the certificate at `SigningCertURL`, fetched only over HTTPS from `sns.<region>.amazonaws.com`
(or `.amazonaws.com.cn`) under the name `SimpleNotificationService-<hex>.pem` and cached, and
confirming a subscription by visiting its `SubscribeURL` (same host rule).

The certificate fetcher is a plain function held by `SigningCertificates` (the app's state),
so tests hand in their own certificate; the URL checks stand on their own.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from prefcenter.inbound.errors import PayloadInvalid, SenderNotAllowed, SignatureInvalid
from prefcenter.problems import ServiceUnavailable

# sns.us-east-1.amazonaws.com, sns.us-gov-west-1.amazonaws.com, sns.cn-north-1.amazonaws.com.cn
_SNS_HOST = re.compile(r"sns\.[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}\.amazonaws\.com(?:\.cn)?")
_CERT_PATH = re.compile(r"/SimpleNotificationService-[0-9a-f]{16,64}\.pem")
# The fields signed, in order, per message type (absent optional ones are left out).
_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
    "UnsubscribeConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_OPTIONAL = frozenset({"Subject"})
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
CLOCK_SKEW = timedelta(minutes=5)
# Certificates kept in memory per process: SNS signs with one per region, rotated rarely.
CACHE_SIZE = 16
MAX_CERTIFICATE_BYTES = 16 * 1024
RETRY_AFTER = timedelta(minutes=5)
FETCH_TIMEOUT_S = 5.0

CertificateFetcher = Callable[[str], bytes]


class CertificateNotCached(Exception):
    """Raised instead of fetching a certificate when the caller asked not to fetch (on the
    event loop, where no request to AWS may block)."""


def _https_url_on_sns(url: Any, what: str) -> Any:
    if not isinstance(url, str) or len(url) > 2048:
        raise SenderNotAllowed(f"The {what} is missing.")
    parts = urlsplit(url)
    host_ok = parts.hostname is not None and _SNS_HOST.fullmatch(parts.hostname)
    if (
        parts.scheme != "https"
        or not host_ok
        or parts.port not in (None, 443)
        or parts.username is not None
        or parts.password is not None
        or parts.fragment
    ):
        raise SenderNotAllowed(
            f"The {what} is not an HTTPS URL on sns.<region>.amazonaws.com; it is not fetched."
        )
    return parts


def check_certificate_url(url: Any) -> str:
    """The `SigningCertURL` if it is one SNS uses; else 403 (it is never fetched)."""
    parts = _https_url_on_sns(url, "SigningCertURL")
    if not _CERT_PATH.fullmatch(parts.path) or parts.query:
        raise SenderNotAllowed("The SigningCertURL does not name an SNS signing certificate.")
    return str(url)


def check_subscribe_url(url: Any, *, topic_arn: str) -> str:
    """The `SubscribeURL` if it confirms a subscription to this topic at SNS; else 403."""
    parts = _https_url_on_sns(url, "SubscribeURL")
    query = parse_qs(parts.query)
    if (
        parts.path != "/"
        or query.get("Action") != ["ConfirmSubscription"]
        or query.get("TopicArn") != [topic_arn]
    ):
        raise SenderNotAllowed("The SubscribeURL does not confirm a subscription to the topic.")
    return str(url)


def fetch_over_https(url: str) -> bytes:
    """The certificate at an already checked URL: TLS verified, no redirects, bounded."""
    with (
        httpx.Client(timeout=FETCH_TIMEOUT_S, follow_redirects=False) as client,
        client.stream("GET", url) as response,
    ):
        response.raise_for_status()
        body = b""
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_CERTIFICATE_BYTES:
                raise ValueError("certificate too large")
        return body


class SigningCertificates:
    """SNS signing certificates by URL, fetched once and kept (at most `CACHE_SIZE`, the least
    recently used dropped first). Shared by a process's request threads.

    A URL that gave no certificate is not fetched again for `RETRY_AFTER`: topic ARNs are no
    secret, so anyone may post messages naming an allowed topic and a made-up certificate name
    on SNS's host, and each would otherwise be a request from us to AWS."""

    def __init__(self, fetch: CertificateFetcher = fetch_over_https) -> None:
        self._fetch = fetch
        self._keys: OrderedDict[str, rsa.RSAPublicKey] = OrderedDict()
        self._failed: OrderedDict[str, datetime] = OrderedDict()
        self._lock = threading.Lock()

    def public_key(self, url: str, *, now: datetime, fetch: bool = True) -> rsa.RSAPublicKey:
        """The certificate's parsed public key, fetched the first time (with `fetch=False`:
        CertificateNotCached instead of a fetch)."""
        with self._lock:
            key = self._keys.get(url)
            if key is not None:
                self._keys.move_to_end(url)
                return key
            failed_at = self._failed.get(url)
            if failed_at is not None and now - failed_at < RETRY_AFTER:
                raise SignatureInvalid("The SNS signing certificate could not be had.")
        if not fetch:
            raise CertificateNotCached(url)
        try:
            key = self._load(url, now=now)
        except SignatureInvalid:
            with self._lock:
                self._failed[url] = now
                self._failed.move_to_end(url)
                while len(self._failed) > CACHE_SIZE:
                    self._failed.popitem(last=False)
            raise
        with self._lock:
            self._keys[url] = key
            while len(self._keys) > CACHE_SIZE:
                self._keys.popitem(last=False)
        return key

    def _load(self, url: str, *, now: datetime) -> rsa.RSAPublicKey:
        try:
            pem = self._fetch(url)
            certificate = x509.load_pem_x509_certificate(pem)
        except (httpx.HTTPError, ValueError) as exc:
            raise SignatureInvalid("The SNS signing certificate could not be had.") from exc
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise SignatureInvalid("The SNS signing certificate is not valid now.")
        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise SignatureInvalid("The SNS signing certificate holds no RSA key.")
        return key


def string_to_sign(message: dict[str, Any]) -> bytes:
    """`Name\\nvalue\\n` for each signed field of the message's type, in SNS's order."""
    fields = _SIGNED_FIELDS[str(message.get("Type"))]
    parts: list[str] = []
    for name in fields:
        value = message.get(name)
        if value is None and name in _OPTIONAL:
            continue
        if not isinstance(value, str):
            raise SignatureInvalid(f"The message lacks `{name}`.")
        parts.append(f"{name}\n{value}\n")
    return "".join(parts).encode()


@dataclass(frozen=True, slots=True)
class SnsMessage:
    type: str
    message_id: str
    topic_arn: str
    body: dict[str, Any]

    @property
    def message(self) -> str:
        return str(self.body.get("Message", ""))


def read_message(raw: bytes) -> SnsMessage:
    """The SNS message in a request body (JSON, sent as `text/plain`); 400 if none."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PayloadInvalid("The body is not an SNS message (JSON).") from exc
    if not isinstance(body, dict) or body.get("Type") not in _SIGNED_FIELDS:
        raise PayloadInvalid("The body is not an SNS notification or subscription message.")
    message_id, topic_arn = body.get("MessageId"), body.get("TopicArn")
    if not isinstance(message_id, str) or not message_id or not isinstance(topic_arn, str):
        raise PayloadInvalid("The SNS message lacks its MessageId or TopicArn.")
    return SnsMessage(type=str(body["Type"]), message_id=message_id, topic_arn=topic_arn, body=body)


def verify(
    message: SnsMessage,
    *,
    topics: frozenset[str],
    certificates: SigningCertificates,
    now: datetime,
    tolerance: timedelta,
    fetch: bool = True,
) -> None:
    """In order, cheapest first: the topic is one configured (403), the certificate URL is
    SNS's (403), the signature checks with its certificate (401), and the message is not
    older than `tolerance` (401). With `fetch=False` a certificate not cached yet raises
    CertificateNotCached rather than being fetched."""
    if message.topic_arn not in topics:
        raise SenderNotAllowed("Notifications of this SNS topic are not accepted here.")
    version = message.body.get("SignatureVersion")
    hash_of = _HASHES.get(version) if isinstance(version, str) else None
    if hash_of is None:
        raise SignatureInvalid("SignatureVersion must be 1 or 2.")
    url = check_certificate_url(message.body.get("SigningCertURL"))
    signature = message.body.get("Signature")
    if not isinstance(signature, str) or len(signature) > 2048:
        raise SignatureInvalid("The message has no Signature.")
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureInvalid("The Signature is not base64.") from exc
    if base64.b64encode(raw).decode() != signature:
        # One spelling only: base64 has others for the same bytes (the unused low bits).
        raise SignatureInvalid("The Signature is not canonical base64.")
    signed = string_to_sign(message.body)
    key = certificates.public_key(url, now=now, fetch=fetch)
    try:
        key.verify(raw, signed, padding.PKCS1v15(), hash_of())
    except InvalidSignature as exc:
        raise SignatureInvalid("The signature does not match the message.") from exc
    stamp = message.body.get("Timestamp")
    sent_at = _time(stamp)
    if sent_at is None or sent_at < now - tolerance or sent_at > now + CLOCK_SKEW:
        raise SignatureInvalid("The message's Timestamp is too old, or in the future.")


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo is not None else None


def confirm_subscription(message: SnsMessage, *, get: Callable[[str], None]) -> None:
    """Visit the `SubscribeURL` of a verified SubscriptionConfirmation (403 if it is not SNS's
    confirmation of this very topic)."""
    url = check_subscribe_url(message.body.get("SubscribeURL"), topic_arn=message.topic_arn)
    try:
        get(url)
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(
            "The subscription could not be confirmed at SNS now; SNS will send it again."
        ) from exc


def get_over_https(url: str) -> None:
    with httpx.Client(timeout=FETCH_TIMEOUT_S, follow_redirects=False) as client:
        client.get(url).raise_for_status()
