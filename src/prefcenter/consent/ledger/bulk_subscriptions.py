"""Owns writing an import batch's decided subscriptions, whose values ledger.changes makes, in
one statement (PostgreSQL: from a TEMP table filled by binary `COPY`, merged on the server
while the caller builds its events)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects import sqlite
from sqlmodel import Session

from prefcenter.consent.ledger.bulk import copy_rows
from prefcenter.consent.ledger.changes import SUBSCRIPTION_COLUMNS
from prefcenter.consent.ledger.sql import postgres_session
from prefcenter.consent.models import Subscription

# A subscription row as the batch writes it: its key, then ledger.changes' columns.
WRITTEN_COLUMNS = ("contact_id", "topic_id", *SUBSCRIPTION_COLUMNS)
_WRITTEN_TYPES = ("int4", "int4", "text", "timestamptz", "timestamptz", "text", "bool", "text")
_MERGE_SUBSCRIPTIONS = (
    f"INSERT INTO subscription ({', '.join(WRITTEN_COLUMNS)}) "  # noqa: S608  (constants)
    # In key order, as the floor's merge: each index's pages and each contact's (the foreign
    # key's check) are met in turn, not at random.
    f"SELECT {', '.join(WRITTEN_COLUMNS)} FROM import_subscription ORDER BY contact_id "
    "ON CONFLICT (contact_id, topic_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in SUBSCRIPTION_COLUMNS)
)


def write_subscriptions(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert or overwrite each row (`WRITTEN_COLUMNS`, one per contact) in one statement."""
    with subscriptions_written(session, rows):
        pass


@contextmanager
def subscriptions_written(session: Session, rows: Sequence[dict[str, Any]]) -> Iterator[None]:
    """Insert or overwrite each row (`WRITTEN_COLUMNS`, one per contact) in one statement, by
    the end of the block.

    On PostgreSQL the rows are sent first, then the merge runs on the server while the block
    runs (the caller's Python work, which must not use the session meanwhile: the merge has
    its connection), the block's end waiting for it. An import builds its events there, in the
    time it would otherwise wait for the merge. The merge's error is raised as the session's
    would be (`SQLAlchemyError`), the block's own first if both fail."""
    if not rows:
        yield
        return
    if not postgres_session(session):
        insert = sqlite.insert(Subscription)
        session.execute(
            insert.on_conflict_do_update(
                index_elements=["contact_id", "topic_id"],
                set_={name: insert.excluded[name] for name in SUBSCRIPTION_COLUMNS},
            ),
            list(rows),
        )
        yield
        return
    session.execute(
        text(
            "CREATE TEMP TABLE import_subscription (contact_id integer, topic_id integer, "
            "status text, occurred_at timestamptz, since timestamptz, source text, "
            "by_recipient boolean, event_id text) ON COMMIT DROP"
        )
    )
    copy_rows(
        session,
        f"COPY import_subscription ({', '.join(WRITTEN_COLUMNS)})",
        _WRITTEN_TYPES,
        [[row[c] for c in WRITTEN_COLUMNS] for row in rows],
    )
    connection = session.connection()
    # The server's wait releases the GIL: the block runs in the meantime.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-merge") as pool:
        merged = pool.submit(connection.exec_driver_sql, _MERGE_SUBSCRIPTIONS)
        try:
            yield
        finally:
            wait([merged])  # the connection is the caller's again only after the merge
        merged.result()
