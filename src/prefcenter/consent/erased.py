"""Owns the question every path that could bring an address back in must ask: was it erased?

An erased address is kept only as its keyed hash (`erased_address`, see consent.erasure), so
the answer needs the audit key. Imports call `erased_among` once per chunk of addresses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import String
from sqlmodel import Session, col, select

from prefcenter.audit.keys import AuditKeys
from prefcenter.consent.ledger.sql import among, postgres_session
from prefcenter.consent.models import ErasedAddress
from prefcenter.problems import Conflict

# Hashes per query: SQLite binds each as a parameter (999 before 3.32).
_QUERY_CHUNK = 900


class AddressErased(Conflict):
    slug = "address-erased"
    title = "The address was erased"


def erased_among(session: Session, keys: AuditKeys, addresses: Iterable[str]) -> set[str]:
    """Which of these normalised addresses were erased: one query per chunk of addresses."""
    return erased_of_hashes(
        session, {keys.address_hash(address): address for address in set(addresses)}
    )


def erased_of_hashes(session: Session, by_hash: Mapping[str, str]) -> set[str]:
    """`erased_among` for a caller that has the addresses' keyed hashes already (`by_hash`:
    each address by its hash)."""
    hashes = sorted(by_hash)
    found: set[str] = set()
    postgres = postgres_session(session)
    # PostgreSQL takes them all as one array parameter.
    size = max(len(hashes), 1) if postgres else _QUERY_CHUNK
    for start in range(0, len(hashes), size):
        chunk = hashes[start : start + size]
        found.update(
            session.exec(
                select(ErasedAddress.address_hash).where(
                    among(col(ErasedAddress.address_hash), chunk, String(), postgres=postgres)
                )
            )
        )
    return {by_hash[h] for h in found}


def is_erased_address(session: Session, keys: AuditKeys, normalised_address: str) -> bool:
    return session.get(ErasedAddress, keys.address_hash(normalised_address)) is not None


def refuse_erased_address(session: Session, keys: AuditKeys, normalised_address: str) -> None:
    """Refuse to record anything for an erased address: that would store it again. An opt-out
    is refused too: the address is suppressed for good already."""
    if is_erased_address(session, keys, normalised_address):
        raise address_erased()


def address_erased() -> AddressErased:
    """The problem that refuses an erased address."""
    return AddressErased(
        "This address was erased at the person's request and stays suppressed for good; "
        "nothing was recorded.",
        errors=[{"field": "email", "detail": "was erased"}],
    )
