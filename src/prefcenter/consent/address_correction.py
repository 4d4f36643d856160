"""Owns the correction of a contact's address (`PATCH /v1/contacts/{id}`), which the support
desk makes for a person who asked.

The contact keeps its id, subscriptions, suppression and history; only the address changes,
through the write model's `readdress_contact` (the erased check in the same statement). The
old address goes into no event: the correction's event carries the keyed hash of the new one,
like every event about the contact from then on.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from prefcenter.audit.context import RequestContext
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.schemas import EventKind, NewEvent
from prefcenter.audit.service import append_event
from prefcenter.consent.contact_creation import readdress_contact
from prefcenter.consent.queries import ContactNotFound, is_public_id
from prefcenter.consent.schemas import AddressCorrectionIn, AddressCorrectionOut
from prefcenter.contacts.service import find_contacts, lock_contact_by_public_id
from prefcenter.problems import Conflict

# The source of the correction's event: the support desk (consent.rules.SUPPORT_SOURCES), the
# only one that corrects addresses. Stored in the trail: never changes.
CORRECTION_SOURCE = "support"


class AddressTaken(Conflict):
    slug = "address-taken"
    title = "Another contact has this address"


def correct_address(
    session: Session,
    public_id: str,
    correction: AddressCorrectionIn,
    *,
    keys: AuditKeys,
    actor: str,
    request: RequestContext,
    now: datetime,
) -> AddressCorrectionOut:
    """Give the contact the corrected address, in the caller's transaction, as `actor` (an
    admin: how the trail names who asked).

    Refused (409) when another contact has the address (merging two people's histories is not
    a correction) or the address was erased; an erased contact is a 404.
    """
    contact = lock_contact_by_public_id(session, public_id) if is_public_id(public_id) else None
    if contact is None:
        raise ContactNotFound(f"There is no contact {public_id!r}, or it was erased.")
    new = correction.address
    if contact.address == new.normalised:
        return AddressCorrectionOut(
            contact_id=contact.public_id, email=new.given, changed=False, event_id=None
        )
    if new.normalised in find_contacts(session, [new.normalised]):
        raise AddressTaken(
            "Another contact has this address; nothing was changed.",
            errors=[{"field": "address", "detail": "belongs to another contact"}],
        )
    readdress_contact(session, keys, contact, new)
    event_id = append_event(
        session,
        NewEvent(
            kind=EventKind.ADDRESS_CHANGE,
            occurred_at=now,
            actor=actor,
            source=CORRECTION_SOURCE,
            outcome="applied",
            contact_id=contact.public_id,
            address=new.normalised,
            reason=correction.reason,
            context={"actor_kind": "admin", **request.as_evidence()},
        ),
    )
    return AddressCorrectionOut(
        contact_id=contact.public_id, email=new.given, changed=True, event_id=event_id
    )
