"""Owns consent receipts: a person's current consents with their proof, as a document with
the fields of the Kantara Consent Receipt v1.1 (also those of ISO/IEC TS 27560), signed with
the audit Ed25519 key so that anyone holding the public key can check it was issued here.

The signature is detached: Ed25519 over the RFC 8785 canonical bytes of `receipt`, so any
JSON parser and any RFC 8785 implementation reproduce the signed bytes. Times are RFC 3339
text, as everywhere in this API (Kantara writes seconds since the epoch).

An erased contact gets no receipt (404): there is no consent left to show, and a receipt
would say nothing but that the contact existed.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

import rfc8785
from sqlmodel import Session, col, select

from prefcenter.audit.canonical import decode_document
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.models import AuditEvent, AuditEvidence
from prefcenter.consent.models import Subscription, Suppression
from prefcenter.consent.queries import ContactNotFound, is_public_id
from prefcenter.consent.rules import Status
from prefcenter.consent.schemas import ReceiptSignature, SignedReceipt
from prefcenter.contacts.models import Contact
from prefcenter.contacts.service import find_contact_by_public_id
from prefcenter.settings import Settings
from prefcenter.topics.models import Topic
from prefcenter.topics.schemas import ConsentModel, TopicKind

RECEIPT_VERSION = "KI-CR-v1.1.0"
SIGNATURE_ALGORITHM = "Ed25519"
CANONICALIZATION = "RFC 8785"
# Evidence keys under which callers record the version of the notice or wording the person saw.
NOTICE_KEYS = (
    "notice_version",
    "wording_version",
    "form_version",
    "text_version",
    "policy_version",
    "consent_text_version",
)
TERMINATION = (
    "Until withdrawn: the unsubscribe link in every message, the preference page, or a "
    "request to the controller."
)


def _time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _notice_version(evidence: dict[str, Any]) -> str | None:
    for key in NOTICE_KEYS:
        value = evidence.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    return None


def _documents_of(
    session: Session, contact_public_id: str, event_ids: list[str]
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """The context (what the service recorded of the request, such as the notice version
    checked) and the evidence (what the caller gave as proof) of each event, by event id."""
    if not event_ids:
        return {}
    rows = session.exec(
        select(AuditEvent.id, AuditEvidence.document)
        .join(AuditEvidence, col(AuditEvidence.seq) == col(AuditEvent.seq))
        # By the contact's events (an index range), then their ids: the trail keeps no index
        # of event ids (migration 0018), which no other query needs.
        .where(col(AuditEvent.contact_id) == contact_public_id, col(AuditEvent.id).in_(event_ids))
    )
    return {event_id: decode_document(document) for event_id, document in rows}


def _purpose(
    topic: Topic, row: Subscription, documents: tuple[dict[str, Any], dict[str, Any]]
) -> dict[str, Any]:
    context, evidence = documents
    purpose: dict[str, Any] = {
        "purpose": topic.description or topic.name,
        "purposeCategory": [topic.kind],
        # Opt-in topics need the person's own yes; opt-out topics mail until they say no.
        "consentType": "EXPLICIT" if topic.consent == ConsentModel.OPT_IN else "IMPLICIT",
        "piiCategory": ["email address"],
        "primaryPurpose": True,
        "termination": TERMINATION,
        # A sharing topic's purpose is the disclosure itself, to the party it names.
        "thirdPartyDisclosure": topic.kind == TopicKind.SHARING,
        # Beyond Kantara (ISO/IEC TS 27560 records them): the state and how it came about.
        "state": row.status,
        "stateSince": _time(row.since),
        "consentTimestamp": _time(row.occurred_at),
        "collectionMethod": row.source,
        "byRecipient": row.by_recipient,
        "eventId": row.event_id,
        "evidence": evidence,
    }
    if topic.kind == TopicKind.SHARING:
        purpose["thirdPartyName"] = topic.third_party or ""
    # A version the service checked (`notice` of POST /v1/consents) before one the caller
    # wrote into its evidence.
    checked = context.get("notice")
    notice = checked if isinstance(checked, str) else _notice_version(evidence)
    if notice is not None:
        purpose["noticeVersion"] = notice
    return purpose


def shared_with(rows: list[tuple[Subscription, Topic]]) -> list[str]:
    """Every party the person agreed to share with: sharing topics now `subscribed` (a
    pending or withdrawn one is no agreement), each party once, in order."""
    parties = {
        topic.third_party
        for row, topic in rows
        if topic.kind == TopicKind.SHARING
        and row.status == Status.SUBSCRIBED
        and topic.third_party is not None
    }
    return sorted(parties)


def build_receipt(
    session: Session, contact: Contact, *, settings: Settings, keys: AuditKeys, now: datetime
) -> dict[str, Any]:
    """The receipt document (unsigned) of the contact's current consents."""
    assert contact.id is not None
    rows = list(
        session.exec(
            select(Subscription, Topic)
            .join(Topic, col(Topic.id) == col(Subscription.topic_id))
            .where(col(Subscription.contact_id) == contact.id)
            .order_by(col(Topic.key))
        )
    )
    documents = _documents_of(session, contact.public_id, [row.event_id for row, _ in rows])
    latest = max(rows, key=lambda pair: pair[0].occurred_at, default=None)
    suppression = session.get(Suppression, contact.id)
    controller: dict[str, Any] = {
        "piiController": settings.organization_name or "",
        "piiControllerUrl": settings.base_url,
        "onBehalf": False,
    }
    if settings.unsubscribe_mailto:
        controller["email"] = settings.unsubscribe_mailto
    return {
        "version": RECEIPT_VERSION,
        "jurisdiction": settings.jurisdiction or "",
        "consentTimestamp": _time(latest[0].occurred_at if latest else contact.created_at),
        "collectionMethod": latest[0].source if latest else "",
        "consentReceiptID": str(uuid.uuid4()),
        "publicKey": keys.public_key_b64,
        "language": "en",
        "piiPrincipalId": contact.address_display or contact.address or "",
        "piiControllers": [controller],
        "policyUrl": settings.privacy_policy_url or "",
        "services": [
            {
                "service": topic.name,
                "serviceKey": topic.key,
                "transactional": topic.kind == TopicKind.TRANSACTIONAL,
                "purposes": [_purpose(topic, row, documents.get(row.event_id, ({}, {})))],
            }
            for row, topic in rows
        ],
        "sensitive": False,
        "spiCat": [],
        # Beyond Kantara: the contact, the contact-wide marketing opt-out, and when issued.
        "contactId": contact.public_id,
        "suppressedFromAllMarketing": bool(suppression and suppression.suppressed),
        # Beyond Kantara: the parties the person agreed to share their data with.
        "sharedWith": shared_with(rows),
        "issuedAt": _time(now),
    }


def sign_receipt(receipt: dict[str, Any], keys: AuditKeys) -> SignedReceipt:
    signature = keys.sign(rfc8785.dumps(receipt))
    return SignedReceipt(
        receipt=receipt,
        signature=ReceiptSignature(
            algorithm=SIGNATURE_ALGORITHM,
            canonicalization=CANONICALIZATION,
            key_id=keys.key_id,
            public_key=keys.public_key_b64,
            value=base64.b64encode(signature).decode("ascii"),
        ),
    )


def issue_receipt(
    session: Session, public_id: str, *, settings: Settings, keys: AuditKeys, now: datetime
) -> SignedReceipt:
    contact = find_contact_by_public_id(session, public_id) if is_public_id(public_id) else None
    if contact is None or contact.erased_at is not None:
        raise ContactNotFound(f"There is no contact {public_id!r}, or it was erased.")
    receipt = build_receipt(session, contact, settings=settings, keys=keys, now=now)
    return sign_receipt(receipt, keys)
