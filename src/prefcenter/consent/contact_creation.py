"""Owns bringing an address into the ledger: the one place that creates contacts, and so the one
place that asks whether the address was erased first.

Every path that can create a contact (a consent change, links for a send, the console) goes
through `lock_new_contact` (one address, locked for the change that follows),
`create_contacts` (many, set-based) or `insert_contacts` (many, for a caller that reads them
back itself); address correction gives an existing contact its new
address through `readdress_contact`; an import, whose batches stage their addresses in a TEMP
table, through consent.ledger.bulk's insert from it, and `POST /v1/consents`'s lane through its
own statements (consent.ledger.api_lane, api_lane_sqlite), which carry the same erased check in
their SQL. An erased address is never stored again: the single forms refuse it with
`address-erased`, the bulk forms leave it out and name it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import String, bindparam, exists, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from prefcenter.audit.keys import AuditKeys
from prefcenter.consent.erased import (
    address_erased,
    erased_among,
    erased_of_hashes,
    refuse_erased_address,
)
from prefcenter.consent.ledger.sql import among, postgres_session
from prefcenter.consent.models import ErasedAddress
from prefcenter.contacts.addresses import Address
from prefcenter.contacts.models import Contact
from prefcenter.contacts.service import lock_contact, new_public_id, new_public_ids
from prefcenter.db import UtcDateTime
from prefcenter.driver import postgres_cursor, postgres_pipeline

# Inserting and selecting contacts in chunks keeps every statement under SQLite's limit on
# bound parameters.
_CHUNK = 2000


_CONTACT_COLUMNS = ("public_id", "address", "address_display", "created_at")
# The rows as one JSON parameter, parsed by the server into the table's types (an array per
# column goes through the driver's pure-Python list dumper element by element).
_INSERT_CONTACTS_PG = (
    "INSERT INTO contact (public_id, address, address_display, created_at) "
    "SELECT public_id, address, address_display, created_at "
    "FROM json_populate_recordset(NULL::contact, %(rows)s::json) "
    "ON CONFLICT (address) DO NOTHING"
)


# `_INSERT_CONTACTS_PG` with each row's address hash beside it: the rows whose address was
# erased are left out (NOT EXISTS, in the insert itself) and returned.
_INSERT_CONTACTS_UNLESS_ERASED_PG = """WITH given AS (
    SELECT * FROM json_to_recordset(%(rows)s::json) AS given (
        public_id text, address text, address_display text, created_at timestamptz,
        address_hash text
    )
), inserted AS (
    INSERT INTO contact (public_id, address, address_display, created_at)
    SELECT public_id, address, address_display, created_at FROM given
    WHERE NOT EXISTS (
        SELECT 1 FROM erased_address WHERE erased_address.address_hash = given.address_hash
    )
    ON CONFLICT (address) DO NOTHING
)
SELECT given.address FROM given
WHERE EXISTS (SELECT 1 FROM erased_address WHERE erased_address.address_hash = given.address_hash)
"""


@dataclass(frozen=True, slots=True)
class CreatedContacts:
    public_ids: dict[str, str]  # by normalised address, for every address not erased
    erased: frozenset[str]  # normalised addresses that were erased: nothing was created


def lock_new_contact(
    session: Session, keys: AuditKeys, address: Address, *, now: datetime
) -> Contact:
    """The contact with this address, created if new, locked until the transaction ends; an
    erased address is refused (`AddressErased`) and nothing is written.

    Two statements: the insert, guarded in SQL by the erased check (an erased address is
    never stored, even for the instant before a rollback), then the lock, which reads the
    check's answer beside the row. Without a row (the guard held), the erased check is asked
    on its own, and the usual two-step path taken if it passes (as when the row vanished).
    """
    address_hash = keys.address_hash(address.normalised)
    postgres = session.get_bind().dialect.name == "postgresql"
    # On the connection: given a dict, the ORM session would take it for a bulk insert.
    session.connection().execute(
        _INSERT_UNLESS_ERASED_PG if postgres else _INSERT_UNLESS_ERASED_SQLITE,
        {
            "public_id": new_public_id(),
            "address": address.normalised,
            "address_display": address.given,
            "created_at": now,
            "address_hash": address_hash,
        },
    )
    query = _LOCK_WITH_ERASED_FOR_UPDATE if postgres else _LOCK_WITH_ERASED
    row = session.exec(
        query, params={"address": address.normalised, "address_hash": address_hash}
    ).first()
    if row is not None:
        contact, erased = row
        if erased:
            raise address_erased()
        return contact
    refuse_erased_address(session, keys, address.normalised)
    return lock_contact(session, address, now=now)


def readdress_contact(
    session: Session, keys: AuditKeys, contact: Contact, address: Address
) -> None:
    """Give the (locked) contact this address; an erased address is refused (`AddressErased`)
    and nothing is written. As in `lock_new_contact`, the erased check guards the UPDATE itself,
    so an erased address is never stored, even for the instant before a rollback."""
    written = session.execute(
        update(Contact)
        .where(
            col(Contact.id) == contact.id,
            ~exists().where(
                col(ErasedAddress.address_hash) == keys.address_hash(address.normalised)
            ),
        )
        .values(address=address.normalised, address_display=address.given)
        .execution_options(synchronize_session=False)
    )
    if written.rowcount != 1:  # type: ignore[attr-defined]
        raise address_erased()
    session.refresh(contact, ["address", "address_display"])


_ERASED = exists().where(col(ErasedAddress.address_hash) == bindparam("address_hash"))


def _insert_unless_erased(insert: Callable[[type[Contact]], Any]) -> Any:
    """The contact's INSERT guarded by the erased check, built once per dialect with bound
    values (built per call with literals, it cost more CPU than running it)."""
    return (
        insert(Contact)
        .from_select(
            list(_CONTACT_COLUMNS),
            select(
                bindparam("public_id", type_=String()),
                bindparam("address", type_=String()),
                bindparam("address_display", type_=String()),
                bindparam("created_at", type_=UtcDateTime()),
            ).where(~_ERASED),
        )
        .on_conflict_do_nothing(index_elements=["address"])
    )


_INSERT_UNLESS_ERASED_PG = _insert_unless_erased(postgresql.insert)
_INSERT_UNLESS_ERASED_SQLITE = _insert_unless_erased(sqlite.insert)
_LOCK_WITH_ERASED = (
    select(Contact, _ERASED.label("erased"))
    .where(col(Contact.address) == bindparam("address"))
    .execution_options(populate_existing=True)
)
_LOCK_WITH_ERASED_FOR_UPDATE = _LOCK_WITH_ERASED.with_for_update(of=Contact)


def create_contacts(
    session: Session, keys: AuditKeys, given_by_address: Mapping[str, str], *, now: datetime
) -> CreatedContacts:
    """Public ids by normalised address (`given_by_address` maps each to its form as given);
    unknown addresses get a contact and nothing else. Erased addresses get nothing. Set-based:
    one erased check, one insert and one select per chunk."""
    erased = erased_among(session, keys, given_by_address)
    addresses = sorted(a for a in given_by_address if a not in erased)
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    public_ids: dict[str, str] = {}
    for start in range(0, len(addresses), _CHUNK):
        chunk = addresses[start : start + _CHUNK]
        public_ids.update(_public_ids(session, chunk))
        missing = [a for a in chunk if a not in public_ids]
        if missing:
            new_rows = [
                {
                    "public_id": public_id,
                    "address": a,
                    "address_display": given_by_address[a],
                    "created_at": now,
                }
                for a, public_id in zip(missing, new_public_ids(len(missing)), strict=True)
            ]
            if dialect == "postgresql":
                # One statement: an executemany is a round trip a row.
                session.connection().exec_driver_sql(
                    _INSERT_CONTACTS_PG, {"rows": orjson.dumps(new_rows).decode()}
                )
            else:
                session.execute(
                    insert(Contact).on_conflict_do_nothing(index_elements=["address"]), new_rows
                )
            public_ids.update(_public_ids(session, missing))
    return CreatedContacts(public_ids=public_ids, erased=frozenset(erased))


def insert_contacts(
    session: Session,
    given_by_address: Mapping[str, str],
    *,
    address_hashes: Mapping[str, str],
    now: datetime,
) -> frozenset[str]:
    """`create_contacts` for a caller that reads the contacts itself next (and locks them:
    consent.ledger.batch) and has the addresses' keyed hashes (`address_hashes`, by
    address): every address not erased is inserted, one that has a contact already left as
    it is (ON CONFLICT DO NOTHING), and nothing is read back. Returns the erased addresses,
    which get nothing.

    On PostgreSQL one statement: the insert guarded in SQL by the erased check, as
    `lock_new_contact`'s (an erased address is never stored, even for the instant before a
    rollback), which returns the erased addresses it left out."""
    if postgres_session(session):
        with inserting_contacts(
            session, given_by_address, address_hashes=address_hashes, now=now
        ) as inserted:
            pass
        return inserted.erased
    erased = erased_of_hashes(
        session, {address_hashes[address]: address for address in given_by_address}
    )
    kept = sorted(a for a in given_by_address if a not in erased)
    new_rows = [
        {
            "public_id": public_id,
            "address": address,
            "address_display": given_by_address[address],
            "created_at": now,
        }
        for address, public_id in zip(kept, new_public_ids(len(kept)), strict=True)
    ]
    # SQLite: its write transaction, open since BEGIN IMMEDIATE, keeps an erasure from
    # coming between the check and the insert.
    for start in range(0, len(new_rows), _CHUNK):
        session.execute(
            sqlite.insert(Contact).on_conflict_do_nothing(index_elements=["address"]),
            new_rows[start : start + _CHUNK],
        )
    return frozenset(erased)


@dataclass(slots=True)
class InsertedContacts:
    erased: frozenset[str] = frozenset()  # the erased addresses, left out


@contextmanager
def inserting_contacts(
    session: Session,
    given_by_address: Mapping[str, str],
    *,
    address_hashes: Mapping[str, str],
    now: datetime,
) -> Iterator[InsertedContacts]:
    """`insert_contacts` around a block: on PostgreSQL its one statement is sent when the block
    starts and its answer read when the block ends (psycopg's pipeline mode), so that the
    server inserts while the block runs; the block must not use the session. The erased
    addresses are in the `InsertedContacts` once the block is over."""
    inserted = InsertedContacts()
    if not given_by_address or not postgres_session(session):
        if given_by_address:
            inserted.erased = insert_contacts(
                session, given_by_address, address_hashes=address_hashes, now=now
            )
        yield inserted
        return
    # The ids from one read of the system's randomness, not one a contact.
    addresses = sorted(given_by_address)
    rows = [
        {
            "public_id": public_id,
            "address": address,
            "address_display": given_by_address[address],
            "created_at": now,
            "address_hash": address_hashes[address],
        }
        for address, public_id in zip(addresses, new_public_ids(len(addresses)), strict=True)
    ]
    connection = session.connection()
    with closing(postgres_cursor(connection)) as cursor:
        with postgres_pipeline(connection):
            cursor.execute(_INSERT_CONTACTS_UNLESS_ERASED_PG, {"rows": orjson.dumps(rows).decode()})
            yield inserted
        inserted.erased = frozenset(address for (address,) in cursor.fetchall())


def _public_ids(session: Session, addresses: list[str]) -> dict[str, str]:
    postgres = postgres_session(session)
    rows = session.exec(
        select(Contact.address, Contact.public_id).where(
            among(col(Contact.address), addresses, String(), postgres=postgres)
        )
    ).all()
    return {address: public_id for address, public_id in rows if address}
