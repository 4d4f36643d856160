"""The service under test: its settings, a database of each engine, API keys."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlmodel import SQLModel

from prefcenter import tables  # noqa: F401  (every table, for the list below)
from prefcenter.apikeys.schemas import Scope
from prefcenter.apikeys.service import create_api_key
from prefcenter.db import Database
from prefcenter.settings import Settings

ENGINES = ("sqlite", "postgresql")
TEST_SIGNING_KEYS = "t1:test-signing-secret-0123456789abcdefghij"
TEST_AUDIT_KEY = "test-audit-key-0123456789abcdefghijklmnop"
POSTGRES_ADMIN_URL = os.environ.get(
    "PREFCENTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
# audit_head is reset rather than emptied: its one row is the chain's head.
_KEPT_TABLES = frozenset({"audit_head", "alembic_version"})


def make_settings(database_url: str, **overrides: Any) -> Settings:
    overrides.setdefault("signing_keys", TEST_SIGNING_KEYS)
    overrides.setdefault("audit_key", TEST_AUDIT_KEY)
    overrides.setdefault("base_url", "http://testserver")
    # The service's own mail is off unless a test turns it on (on SQLite it would default to
    # a Maildir beside the database).
    overrides.setdefault("mail_url", "off")
    return Settings(_env_file=None, database_url=database_url, **overrides)


def emptied_tables() -> list[str]:
    """Every table the models declare but the chain's head: a new table is emptied between
    tests without anyone having to list it."""
    return [t.name for t in SQLModel.metadata.sorted_tables if t.name not in _KEPT_TABLES]


# The sequences of the emptied tables, set back to their start (what RESTART IDENTITY does).
_RESTART_SEQUENCES = """
SELECT setval(s.oid, q.seqstart, false)
FROM pg_class s
JOIN pg_sequence q ON q.seqrelid = s.oid
JOIN pg_depend d ON d.objid = s.oid AND d.deptype IN ('a', 'i')
JOIN pg_class t ON t.oid = d.refobjid
WHERE s.relkind = 'S' AND t.relname = ANY(:tables)
"""


def reset_postgres(url: URL) -> None:
    """Empty every table but the chain's head, restart their sequences, reset the head.

    Rows are DELETEd, with triggers off (`session_replication_role = replica`: the audit
    trail's append-only triggers and the foreign-key checks), rather than TRUNCATEd: TRUNCATE
    gives each of the ~20 tables and its indexes new files, about 5× slower on tables this
    small, and it ran before every PostgreSQL test. The harness's own commit is asynchronous
    (the app's stay synchronous): nothing here needs to survive a PostgreSQL crash. A role that
    may not change `session_replication_role` (not a superuser) gets the TRUNCATE.
    """
    names = emptied_tables()
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("SET LOCAL synchronous_commit = off"))
            try:
                with connection.begin_nested():
                    connection.execute(text("SET LOCAL session_replication_role = replica"))
            except DBAPIError:
                connection.execute(text(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE"))
            else:
                for table in reversed(names):
                    connection.execute(text(f"DELETE FROM {table}"))
                connection.execute(text(_RESTART_SEQUENCES), {"tables": names})
            connection.execute(text("UPDATE audit_head SET seq = 0, hash = repeat('0', 64)"))
    finally:
        engine.dispose()


def issue_key(database: Database, *scopes: Scope, name: str = "test") -> dict[str, str]:
    """Authorization headers for a new API key with these scopes."""
    with database.transaction(write=True) as session:
        issued = create_api_key(session, name=name, scopes=list(scopes))
    return {"Authorization": f"Bearer {issued.secret}"}
