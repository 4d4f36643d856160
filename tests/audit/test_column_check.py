"""The database's column check (chain_rows) on both engines: strings JSON escapes take the
exact way and verify, and columns written unescaped into forged canonical bytes, so that
plain concatenation would find them equal, are still named."""

from __future__ import annotations

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from prefcenter.audit import chain_rows
from prefcenter.audit.canonical import encode_event
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.verify import VerifyResult
from prefcenter.consent.ledger.replay import verify_ledger
from prefcenter.db import Database
from prefcenter.settings import Settings
from tests.audit.tampering import fetch, rechain, tamper
from tests.support.factories import make_topic, record_change

Headers = dict[str, str]
SEQ = 2  # the event rewritten, of three


@pytest.fixture
def keys(
    client: TestClient, admin_headers: Headers, database: Database, settings: Settings
) -> AuditKeys:
    make_topic(client, admin_headers, "news")
    for address in ("ada@example.com", "bob@example.com"):
        record_change(client, admin_headers, address, "subscribed", topic="news")
    seqs = fetch(settings.database_url, "SELECT seq FROM audit_event ORDER BY seq")
    assert [seq for (seq,) in seqs] == [1, 2, 3]
    return AuditKeys.from_settings(settings)


def rewrite_actor(url: str, actor: str, canonical: bytes) -> None:
    """Set event SEQ's actor column and canonical bytes, and rechain: what an attacker with
    the database does, the chain verifying on its own afterwards."""
    tamper(
        url,
        "UPDATE audit_event SET actor = :actor, canonical = :canonical WHERE seq = :seq",
        {"actor": actor, "canonical": canonical, "seq": SEQ},
    )
    rechain(url)


def canonical_of(url: str) -> bytes:
    ((canonical,),) = fetch(url, "SELECT canonical FROM audit_event WHERE seq = :s", {"s": SEQ})
    return bytes(canonical)


@pytest.mark.parametrize(
    "actor",
    [
        'admin:"quoted"',
        "admin:back\\slash",
        "admin:line\nbreak\ttab",
        "admin:bell\u0007 and \u001f",
        "admin:Zeichen ✓ 😀",
        "admin:\u2028 and \u007f",
    ],
)
def test_strings_json_escapes_verify_when_the_bytes_say_them(
    keys: AuditKeys, database: Database, settings: Settings, actor: str
) -> None:
    """Written as the service writes them (RFC 8785 escapes), the columns are what the bytes
    say: the check that escapes each string agrees."""
    values = orjson.loads(canonical_of(settings.database_url))
    del values["v"]
    rewrite_actor(settings.database_url, actor, encode_event({**values, "actor": actor}))

    assert verify_ledger(database, keys) == VerifyResult(ok=True, checked=3)


@pytest.mark.parametrize(
    "actor",
    [
        # Quotes that make a key of their own when written unescaped.
        'admin","zz":"x',
        # A raw control character: not JSON at all.
        "admin\u0007",
        # A backslash that escapes the closing quote when written unescaped.
        "admin\\",
    ],
)
def test_columns_written_unescaped_into_the_bytes_are_named(
    keys: AuditKeys, database: Database, settings: Settings, actor: str
) -> None:
    """Forged bytes that hold the column exactly as plain concatenation writes it (no
    escaping): the bytes are not an event, or do not say that actor, and the event is named."""
    original = canonical_of(settings.database_url)
    old_actor = orjson.loads(original)["actor"]
    old = b'"actor":' + orjson.dumps(old_actor)
    assert old in original
    forged = original.replace(old, b'"actor":"' + actor.encode() + b'"')
    rewrite_actor(settings.database_url, actor, forged)

    result = verify_ledger(database, keys)

    assert (result.ok, result.first_bad_seq) == (False, SEQ)
    assert result.detail in (
        "its canonical bytes are not an event",
        "its columns differ from its canonical bytes",
    )


@pytest.mark.parametrize(
    "actor", ['admin:"quoted"', "admin:back\\slash", "admin:bell\u0007", "admin:✓", "admin"]
)
def test_the_plain_way_answers_as_the_escaping_way(
    keys: AuditKeys, settings: Settings, actor: str
) -> None:
    """PostgreSQL's check (plain concatenation where no string needs escaping, `to_json`
    otherwise) says of every event what `to_json` alone says: the events written as the
    service writes them, and the same bytes forged unescaped."""
    if settings.is_sqlite:
        pytest.skip("the plain way is PostgreSQL's")
    values = orjson.loads(canonical_of(settings.database_url))
    del values["v"]
    escaping = f"coalesce(convert_to({chain_rows.pg_json_sql()}, 'UTF8') = e.canonical, false)"
    both = f"SELECT coalesce({chain_rows.pg_same_sql()}, false), {escaping} FROM audit_event e"
    written = encode_event({**values, "actor": actor})
    forged = written.replace(orjson.dumps(actor), b'"' + actor.encode() + b'"')
    for canonical, same in ((written, True), (forged, forged == written)):
        rewrite_actor(settings.database_url, actor, canonical)
        engine = create_engine(settings.database_url)
        try:
            with engine.connect() as connection:  # the SQL as the driver gets it: no binds
                answers = connection.exec_driver_sql(f"{both} ORDER BY e.seq").all()
        finally:
            engine.dispose()
        assert answers == [(True, True), (same, same), (True, True)], canonical
