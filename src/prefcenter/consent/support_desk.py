"""Owns the support desk's correction of a contact's address (`PATCH /v1/contacts/{id}`).

The contact keeps its id, subscriptions, suppression and history; only the address changes.
The old address goes into no event: the correction's event carries the keyed hash of the new
one, like every event about the contact from then on.
"""

from __future__ import annotations

from sqlmodel import Session

from prefcenter.apikeys.schemas import Caller
from prefcenter.audit.context import RequestContext
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.schemas import EventKind, NewEvent
from prefcenter.audit.service import append_event
from prefcenter.consent.erased import refuse_erased_address
from prefcenter.consent.queries import ContactNotFound, is_public_id
from prefcenter.consent.schemas import AddressCorrectionIn, AddressCorrectionOut
from prefcenter.contacts.service import find_contacts, lock_contact_by_public_id
from prefcenter.db import utcnow
from prefcenter.problems import Conflict

SUPPORT_SOURCE = "support"


class AddressTaken(Conflict):
    slug = "address-taken"
    title = "Another contact has this address"


def correct_address(
    session: Session,
    public_id: str,
    correction: AddressCorrectionIn,
    *,
    keys: AuditKeys,
    caller: Caller,
    request: RequestContext,
) -> AddressCorrectionOut:
    """Give the contact the corrected address, in the caller's transaction.

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
    refuse_erased_address(session, keys, new.normalised)
    if new.normalised in find_contacts(session, [new.normalised]):
        raise AddressTaken(
            "Another contact has this address; nothing was changed.",
            errors=[{"field": "address", "detail": "belongs to another contact"}],
        )
    contact.address = new.normalised
    contact.address_display = new.given
    session.add(contact)
    session.flush()
    event_id = append_event(
        session,
        NewEvent(
            kind=EventKind.ADDRESS_CHANGE,
            occurred_at=utcnow(),
            actor=caller.actor,
            source=SUPPORT_SOURCE,
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
