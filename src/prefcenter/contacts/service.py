"""Use cases for contacts: find or create one by address (locked for the change that follows)."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from prefcenter.contacts.addresses import Address
from prefcenter.contacts.models import Contact

PUBLIC_ID_BYTES = 12  # 96 random bits, 16 characters in a URL


def new_public_id() -> str:
    return secrets.token_urlsafe(PUBLIC_ID_BYTES)


# Characters of one public id: 12 bytes are four whole groups of three in base64, so the
# encoding of many ids' bytes side by side is their encodings side by side.
_PUBLIC_ID_CHARS = PUBLIC_ID_BYTES * 4 // 3


def new_public_ids(count: int) -> list[str]:
    """`count` ids as `new_public_id` makes them, from one read of the system's randomness
    (an import's batch: thousands of ids without thousands of reads)."""
    encoded = base64.urlsafe_b64encode(os.urandom(PUBLIC_ID_BYTES * count)).decode("ascii")
    step = _PUBLIC_ID_CHARS
    return [encoded[start : start + step] for start in range(0, len(encoded), step)]


def lock_contact(session: Session, address: Address, *, now: datetime) -> Contact:
    """The contact with this address, created if new, and locked until the transaction ends.

    Creation is `INSERT … ON CONFLICT DO NOTHING` so that two requests racing for a new
    address both end up with the same row; on PostgreSQL the row lock then serialises every
    change to one contact (SQLite's write transaction already does).
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(
        insert(Contact)
        .values(
            public_id=new_public_id(),
            address=address.normalised,
            address_display=address.given,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["address"])
    )
    query = select(Contact).where(Contact.address == address.normalised)
    if dialect == "postgresql":
        query = query.with_for_update()
    return session.exec(query.execution_options(populate_existing=True)).one()


def find_contacts(session: Session, addresses: Iterable[str]) -> dict[str, Contact]:
    """Contacts by normalised address, for those that exist."""
    wanted = sorted(set(addresses))
    if not wanted:
        return {}
    rows = session.exec(select(Contact).where(col(Contact.address).in_(wanted)))
    return {c.address: c for c in rows if c.address is not None}


# Built once: every recipient's click runs these, and building a statement costs more than
# SQLAlchemy's cached compilation of it.
_BY_PUBLIC_ID = select(Contact).where(col(Contact.public_id) == bindparam("public_id"))
_LOCK_BY_PUBLIC_ID = _BY_PUBLIC_ID.execution_options(populate_existing=True)
_LOCK_BY_PUBLIC_ID_FOR_UPDATE = _LOCK_BY_PUBLIC_ID.with_for_update()


def find_contact_by_public_id(session: Session, public_id: str) -> Contact | None:
    return session.exec(_BY_PUBLIC_ID, params={"public_id": public_id}).first()


def lock_contact_by_public_id(session: Session, public_id: str) -> Contact | None:
    """The contact, locked until the transaction ends (PostgreSQL; SQLite's write transaction
    already excludes other writers), or None if there is none or it was erased."""
    query = (
        _LOCK_BY_PUBLIC_ID_FOR_UPDATE
        if session.get_bind().dialect.name == "postgresql"
        else _LOCK_BY_PUBLIC_ID
    )
    contact = session.exec(query, params={"public_id": public_id}).first()
    if contact is None or contact.erased_at is not None:
        return None
    return contact


def mask_address(address: str) -> str:
    """`ada.lovelace@example.com` → `a•••@example.com`: enough for the person to recognise it,
    too little to harvest from a forwarded page."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}•••@{domain}"
