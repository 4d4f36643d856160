"""The database's column check (chain_rows) on both engines: strings JSON escapes take the
exact way and verify, and columns written unescaped into forged canonical bytes, so that
plain concatenation would find them equal, are still named."""

from __future__ import annotations

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from prefcenter.audit import column_sql
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
    escaping = f"coalesce(convert_to({column_sql.pg_json_sql()}, 'UTF8') = e.canonical, false)"
    both = f"SELECT coalesce({column_sql.pg_same_sql()}, false), {escaping} FROM audit_event e"
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


def _answers(url: str) -> list[tuple[bool, bool]]:
    """Each event's answer (seq order): PostgreSQL's check, and `to_json`'s alone."""
    escaping = f"coalesce(convert_to({column_sql.pg_json_sql()}, 'UTF8') = e.canonical, false)"
    both = f"SELECT coalesce({column_sql.pg_same_sql()}, false), {escaping} FROM audit_event e"
    engine = create_engine(url)
    try:
        with engine.connect() as connection:  # the SQL as the driver gets it: no binds
            connection.exec_driver_sql("SET client_encoding = 'UTF8'")  # as the check's
            return [tuple(row) for row in connection.exec_driver_sql(f"{both} ORDER BY e.seq")]
    finally:
        engine.dispose()


@pytest.mark.parametrize("nulled", [None, "topic", "contact_id"])
@pytest.mark.parametrize(
    "actor",
    # What `to_json` adds to the strings' length: 1, 2, 3 and 5 characters; none.
    ["admin\\", 'a"b"', 'a"b\\', "admin\u0007", 'a"b"c"d"e"', "admin ✓"],
)
def test_the_plain_way_answers_as_the_escaping_way_with_null_columns(
    keys: AuditKeys, settings: Settings, actor: str, nulled: str | None
) -> None:
    """The plain way measures the strings by the stored bytes, less what it writes around
    them (a `null` is two characters more than a string's quotes): with any number of
    characters to escape, and nullable columns null or not, it says what `to_json` alone
    says, of the bytes written as the service writes them and of the same bytes forged
    unescaped."""
    if settings.is_sqlite:
        pytest.skip("the plain way is PostgreSQL's")
    url = settings.database_url
    values = orjson.loads(canonical_of(url))
    del values["v"]
    if nulled is not None:
        values[nulled] = None
        tamper(url, f"UPDATE audit_event SET {nulled} = NULL WHERE seq = :seq", {"seq": SEQ})
    written = encode_event({**values, "actor": actor})
    forged = written.replace(orjson.dumps(actor), b'"' + actor.encode() + b'"')
    for canonical, same in ((written, True), (forged, forged == written)):
        rewrite_actor(url, actor, canonical)
        assert _answers(url) == [(True, True), (same, same), (True, True)], canonical


@pytest.mark.parametrize(
    ("column", "text"),
    [
        ("recorded_at", "10000-01-01T00:00:00.500000Z"),
        ("occurred_at", "12345-06-07T08:09:10.123456Z"),
        ("recorded_at", "0001-01-01T00:00:00.000000Z"),
        ("occurred_at", "9999-12-31T23:59:59.999999Z"),
    ],
)
@pytest.mark.parametrize("actor", ["admin", 'a"b', "a\\"])
def test_the_plain_way_answers_as_the_escaping_way_at_the_edges_of_time(
    keys: AuditKeys, settings: Settings, column: str, text: str, actor: str
) -> None:
    """A time the service cannot write (a year past 9999) is written one character longer
    than the plain way counts on: with the bytes saying that time, and strings to escape
    or not, it still says what `to_json` alone says."""
    if settings.is_sqlite:
        pytest.skip("the plain way is PostgreSQL's")
    url = settings.database_url
    values = orjson.loads(canonical_of(url))
    del values["v"]
    tamper(
        url,
        f"UPDATE audit_event SET {column} = CAST(:at AS timestamptz) WHERE seq = :seq",
        {"at": text.replace("T", " ").replace("Z", "+00"), "seq": SEQ},
    )
    written = encode_event({**values, column: text, "actor": actor})
    forged = written.replace(orjson.dumps(actor), b'"' + actor.encode() + b'"')
    for canonical in (written, forged):
        rewrite_actor(url, actor, canonical)
        answers = _answers(url)
        assert answers[0] == answers[2] == (True, True)
        assert answers[1][0] == answers[1][1] == (canonical == written), canonical


def _set_time(url: str, column: str, at: str) -> None:
    tamper(
        url,
        f"UPDATE audit_event SET {column} = CAST(:at AS timestamptz) WHERE seq = :seq",
        {"at": at, "seq": SEQ},
    )


@pytest.mark.parametrize("column", ["recorded_at", "occurred_at"])
def test_a_time_moved_to_the_same_date_bc_is_named(
    keys: AuditKeys, database: Database, settings: Settings, column: str
) -> None:
    """`to_char` writes a year BC as the same four digits as the year AD: a time moved to
    its date BC, the bytes and the chain untouched, is named by both ways of the check and by
    the check in Python (which cannot load a year before 1)."""
    if settings.is_sqlite:
        pytest.skip("SQLite holds times as text, which has no era")
    url = settings.database_url
    ((at,),) = fetch(url, f"SELECT {column} FROM audit_event WHERE seq = :seq", {"seq": SEQ})
    _set_time(url, column, f"{at.isoformat()} BC")

    assert _answers(url) == [(True, True), (False, False), (True, True)]
    result = verify_ledger(database, keys)
    assert (result.ok, result.first_bad_seq) == (False, SEQ)
    assert result.detail == "its columns differ from its canonical bytes"


@pytest.mark.parametrize("column", ["recorded_at", "occurred_at"])
@pytest.mark.parametrize(
    ("at", "text"),
    [
        # The bytes say the first year AD, the column the first year BC.
        ("0001-01-01 00:00:00+00 BC", "0001-01-01T00:00:00.000000Z"),
        # Half an hour before the first year AD in UTC (in a zone ahead of it), the bytes
        # untouched: `to_char` writes a time that differs from them.
        ("0001-01-01 00:30:00+01", None),
        # A year past 9999, the bytes untouched.
        ("10000-01-01 00:00:00.5+00", None),
    ],
)
def test_a_time_python_cannot_hold_is_named(
    keys: AuditKeys,
    database: Database,
    settings: Settings,
    column: str,
    at: str,
    text: str | None,
) -> None:
    """A time before the year 1 or past 9999, which psycopg refuses to read, in an event
    whose bytes say another time (rechained when they are rewritten): named by both ways of
    the check, and by the check in Python, which reads it as no time at all."""
    if settings.is_sqlite:
        pytest.skip("SQLite holds times as text, which has no era")
    url = settings.database_url
    _set_time(url, column, at)
    if text is not None:
        values = orjson.loads(canonical_of(url))
        del values["v"]
        tamper(
            url,
            "UPDATE audit_event SET canonical = :canonical WHERE seq = :seq",
            {"canonical": encode_event({**values, column: text}), "seq": SEQ},
        )
        rechain(url)

    assert _answers(url) == [(True, True), (False, False), (True, True)]
    result = verify_ledger(database, keys)
    assert (result.ok, result.first_bad_seq) == (False, SEQ)
    assert result.detail == "its columns differ from its canonical bytes"
