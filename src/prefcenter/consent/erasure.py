"""Owns erasure: removing a person's personal data while keeping them suppressed (the check
every path that could bring the address back in must make is consent.erased).

What an erasure keeps, and why:
- the contact row with its public id and `erased_at`, no address: the trail's events name
  the contact by that id, and `GET /v1/contacts/{id}` can say it was erased;
- a contact-wide suppression, so nothing is ever sent to whatever the row still reaches;
- the address as a keyed hash (`erased_address`), the same HMAC the audit chain commits to:
  a new contact with that address is refused (API, imports) and eligibility answers
  `suppressed`, yet the table is useless to anyone without the audit key;
- the chain's events, which hold no address, only its keyed hash; their evidence documents
  (`audit_evidence`: what the caller gave as proof and what the service observed, client
  address included) and their free text (`audit_free_text`: reason and campaign id, where
  staff may have typed a phone number) are deleted, which the chain allows (it commits to
  their HMACs). So are stored answers to `Idempotency-Key` retries that name the contact
  (they echo the address). Events written before migration 0007 hold their reason and
  campaign id in the hashed bytes themselves: those stay (docs/operations.md).

The erasure is a separate table rather than the contact row keeping a hash: one primary-key
lookup answers "was this address erased?" for every path, whether or not a contact row for
it still exists, and the contact row keeps nothing derived from the address.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlmodel import Session, col
from sqlmodel import select as sqlmodel_select

from prefcenter.audit.context import RequestContext
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.models import AuditEvent, AuditEvidence, AuditFreeText
from prefcenter.audit.schemas import EventKind, NewEvent
from prefcenter.audit.service import append_event
from prefcenter.bounces.models import Bounce
from prefcenter.consent.ledger.orm import erase_consent_state
from prefcenter.consent.models import ErasedAddress
from prefcenter.consent.queries import ContactNotFound, is_public_id
from prefcenter.consent.schemas import ErasureOut
from prefcenter.contacts.models import Contact
from prefcenter.idempotency import IdempotencyRecord
from prefcenter.webhooks.queue import queue_event_deliveries
from prefcenter.webhooks.rules import EventType

ERASURE_SOURCE = "erasure"


def _lock_contact(session: Session, public_id: str) -> Contact | None:
    """The contact, erased or not, locked until the transaction ends (PostgreSQL; SQLite's
    write transaction already excludes other writers)."""
    if not is_public_id(public_id):
        return None
    query = sqlmodel_select(Contact).where(Contact.public_id == public_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return session.exec(query.execution_options(populate_existing=True)).first()


def _erasure_event_id(session: Session, public_id: str) -> str:
    event_id = session.exec(
        sqlmodel_select(AuditEvent.id)
        .where(AuditEvent.contact_id == public_id, AuditEvent.kind == EventKind.ERASURE.value)
        .order_by(col(AuditEvent.seq))
    ).first()
    return event_id or ""


def erase_contact(
    session: Session,
    public_id: str,
    *,
    keys: AuditKeys,
    actor: str,
    request: RequestContext,
    now: datetime,
) -> ErasureOut:
    """Erase the contact's personal data, in the caller's transaction, as `actor` (how the
    trail names who asked). A repeat changes nothing and answers as the first erasure did."""
    contact = _lock_contact(session, public_id)
    if contact is None or contact.id is None:
        raise ContactNotFound(f"There is no contact {public_id!r}.")
    if contact.erased_at is not None:
        return ErasureOut(
            contact_id=contact.public_id,
            erased_at=contact.erased_at,
            event_id=_erasure_event_id(session, contact.public_id),
        )
    address = contact.address
    event_ids = select(col(AuditEvent.seq)).where(col(AuditEvent.contact_id) == contact.public_id)
    session.execute(delete(AuditEvidence).where(col(AuditEvidence.seq).in_(event_ids)))
    session.execute(delete(AuditFreeText).where(col(AuditFreeText.seq).in_(event_ids)))
    # Erased is suppressed for good; what the ESPs reported goes with the rest.
    session.execute(delete(Bounce).where(col(Bounce.contact_id) == contact.id))
    # Stored answers to retried requests (`Idempotency-Key`) echo the address.
    session.execute(
        delete(IdempotencyRecord).where(
            col(IdempotencyRecord.response_body).contains(
                f'"contact_id":"{contact.public_id}"', autoescape=True
            )
        )
    )
    # Its consent state goes; it stays suppressed for good (the ledger's write, no consent
    # event: the erasure event below stands for it, and the deep verify leaves it out).
    erase_consent_state(session, contact.id, source=ERASURE_SOURCE, now=now)
    if address is not None:
        address_hash = keys.address_hash(address)
        if session.get(ErasedAddress, address_hash) is None:
            session.add(ErasedAddress(address_hash=address_hash, erased_at=now))
    contact.address = None
    contact.address_display = None
    contact.erased_at = now
    session.add(contact)
    session.flush()
    event_id = append_event(
        session,
        NewEvent(
            kind=EventKind.ERASURE,
            occurred_at=now,
            actor=actor,
            source=ERASURE_SOURCE,
            outcome="applied",
            contact_id=contact.public_id,
            # Only its keyed hash goes into the event.
            address=address,
            context={"actor_kind": "admin", **request.as_evidence()},
        ),
    )
    queue_event_deliveries(
        session,
        event_id=event_id,
        contact_id=contact.public_id,
        types=(EventType.CONTACT_ERASED,),
        now=now,
    )
    return ErasureOut(contact_id=contact.public_id, erased_at=now, event_id=event_id)


def stored_again(session: Session, keys: AuditKeys) -> list[str]:
    """Public ids of contacts whose address was erased before and stored again: links issued
    for an erased address created such contacts until that was refused (security review,
    2026-12). One pass over the contacts, one keyed hash each, in chunks."""
    found: list[str] = []
    last_id = 0
    while True:
        rows = session.execute(
            select(col(Contact.id), col(Contact.public_id), col(Contact.address))
            .where(col(Contact.id) > last_id, col(Contact.address).is_not(None))
            .order_by(col(Contact.id))
            .limit(_SCAN_CHUNK)
        ).all()
        if not rows:
            return found
        last_id = rows[-1][0]
        by_hash = {keys.address_hash(address): public_id for _, public_id, address in rows}
        erased = session.execute(
            select(col(ErasedAddress.address_hash)).where(
                col(ErasedAddress.address_hash).in_(list(by_hash))
            )
        ).scalars()
        found.extend(by_hash[h] for h in erased)


_SCAN_CHUNK = 900  # hashes per query: SQLite binds each as a parameter
