"""Test senders that sign as each ESP does: an SNS signer with its own RSA certificate, a
SendGrid signer with its own P-256 key, a Mailgun signing key, Postmark's basic credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "inbound"
TOPIC_ARN = "arn:aws:sns:us-west-2:123456789012:MyTopic"
CERT_URL = (
    "https://sns.us-west-2.amazonaws.com/"
    "SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem"
)
MAILGUN_KEY = "test-mailgun-signing-key-0123456789"
POSTMARK_USER = "postmark"
POSTMARK_PASSWORD = "test-postmark-password-0123456789"
SENDGRID_GROUP = 10  # asm_group_id of the sample group_unsubscribe


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def fixture(name: str) -> Any:
    return json.loads(fixture_text(name))


def now_text(at: datetime | None = None) -> str:
    moment = at or datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# --- Amazon SNS --------------------------------------------------------------------------------

# As the SNS Developer Guide lists them ("Verifying the signatures of Amazon SNS messages"),
# written out here again rather than taken from the code under test.
_NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_SUBSCRIPTION_FIELDS = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)


@dataclass
class SnsSigner:
    key: rsa.RSAPrivateKey
    certificate_pem: bytes
    fetched: list[str] = field(default_factory=list)

    @classmethod
    def create(cls) -> SnsSigner:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, certificate_pem=certificate.public_bytes(serialization.Encoding.PEM))

    def fetch(self, url: str) -> bytes:
        """The certificate fetcher handed to the app: only the one URL has a certificate."""
        self.fetched.append(url)
        if url != CERT_URL:
            raise ValueError(f"no certificate at {url}")
        return self.certificate_pem

    def sign(self, message: dict[str, Any], *, version: str = "1") -> dict[str, Any]:
        """The message with SignatureVersion, SigningCertURL and Signature set."""
        signed = dict(message)
        signed["SignatureVersion"] = version
        signed.setdefault("SigningCertURL", CERT_URL)
        fields = _NOTIFICATION_FIELDS if signed["Type"] == "Notification" else _SUBSCRIPTION_FIELDS
        text = "".join(f"{name}\n{signed[name]}\n" for name in fields if name in signed)
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(text.encode(), padding.PKCS1v15(), algorithm)
        signed["Signature"] = base64.b64encode(signature).decode()
        return signed

    def notification(
        self,
        content: dict[str, Any],
        *,
        message_id: str | None = None,
        topic_arn: str = TOPIC_ARN,
        sent_at: datetime | None = None,
        version: str = "1",
    ) -> dict[str, Any]:
        """An SNS notification (the documented envelope) carrying an SES notification."""
        envelope = fixture("sns_notification.json")
        envelope.pop("Subject")  # SES notifications carry none
        envelope.update(
            Message=json.dumps(content),
            MessageId=message_id or f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-4c2c",
            TopicArn=topic_arn,
            Timestamp=now_text(sent_at),
        )
        return self.sign(envelope, version=version)


# --- SendGrid ----------------------------------------------------------------------------------


@dataclass
class SendGridSigner:
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls) -> SendGridSigner:
        return cls(key=ec.generate_private_key(ec.SECP256R1()))

    @property
    def public_key(self) -> str:
        """As SendGrid's console shows the verification key: base64 of the DER SPKI."""
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def headers(self, body: bytes, *, at: datetime | None = None) -> dict[str, str]:
        timestamp = str(int((at or datetime.now(UTC)).timestamp()))
        signature = self.key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        }


# --- Mailgun -----------------------------------------------------------------------------------


def mailgun_signed(
    payload: dict[str, Any], *, at: datetime | None = None, token: str | None = None
) -> dict[str, Any]:
    """The payload with a fresh `signature` made with the test signing key."""
    timestamp = str(int((at or datetime.now(UTC)).timestamp()))
    token = token or secrets.token_hex(25)
    digest = hmac.new(
        MAILGUN_KEY.encode(), (timestamp + token).encode(), hashlib.sha256
    ).hexdigest()
    return {**payload, "signature": {"timestamp": timestamp, "token": token, "signature": digest}}


# --- Postmark ----------------------------------------------------------------------------------


def postmark_headers(
    user: str = POSTMARK_USER, password: str = POSTMARK_PASSWORD
) -> dict[str, str]:
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {credentials}", "Content-Type": "application/json"}
