"""consent.ledger.sql: `among`, whose PostgreSQL form sends the values as one array text."""

from __future__ import annotations

from sqlalchemy import Integer, String
from sqlmodel import col, select

from prefcenter.consent.ledger.sql import among, postgres_session
from prefcenter.contacts.models import Contact
from prefcenter.db import Database, utcnow

# Values the array text must quote or escape (quotes, commas, braces, a backslash, a control
# character, NULL's spelling, spaces, non-ASCII), and ordinary ones.
AWKWARD = [
    '"quoted"@example.com',
    "a,b@example.com",
    "{braced}@example.com",
    "back\\slash@example.com",
    "line\nbreak@example.com",
    "NULL",
    "null",
    " spaced @example.com",
    "ünïcode@example.com",
    "plain@example.com",
]


def test_among_finds_exactly_the_values_given(database: Database) -> None:
    with database.transaction(write=True) as session:
        for number, address in enumerate([*AWKWARD, "other@example.com"]):
            session.add(
                Contact(
                    public_id=f"p{number}",
                    address=address,
                    address_display=address,
                    created_at=utcnow(),
                )
            )
        session.flush()
        postgres = postgres_session(session)
        for wanted in (AWKWARD, AWKWARD[:1], AWKWARD[3:4], AWKWARD[-1:], []):
            query = select(Contact.address).where(
                among(col(Contact.address), wanted, String(), postgres=postgres)
            )
            assert sorted(a for a in session.exec(query) if a) == sorted(wanted)
        ids = [c.id for c in session.exec(select(Contact)) if c.address in AWKWARD[:3]]
        found = session.exec(
            select(Contact.address).where(among(col(Contact.id), ids, Integer(), postgres=postgres))
        )
        assert sorted(a for a in found if a) == sorted(AWKWARD[:3])
