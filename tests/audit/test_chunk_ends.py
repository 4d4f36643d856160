"""How verification reads the chain, on both engines (PostgreSQL streams it on a connection
of its own, SQLite reads it a chunk at a time): progress is reported at each chunk's end, a
missing evidence document is named there, before anything found bad in a later chunk, and
the readers beside the verifying connection need no room in the service's pool."""

from __future__ import annotations

from typing import cast

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.pool import QueuePool

from prefcenter.audit import chain_rows
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.verify import check_chain
from prefcenter.db import Database
from prefcenter.settings import Settings
from tests.audit.tampering import fetch, tamper
from tests.support.factories import Headers, make_topic, record_change


@pytest.fixture
def trail(client: TestClient, admin_headers: Headers, database: Database) -> int:
    """A topic and six consent changes, each with its evidence document; the events' count."""
    make_topic(client, admin_headers, "news")
    for person in range(6):
        record_change(client, admin_headers, f"p{person}@example.com", "subscribed")
    ((count,),) = fetch(database.settings.database_url, "SELECT count(*) FROM audit_event")
    return int(count)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 100])
def test_progress_is_reported_at_every_chunk_end_and_the_last(
    database: Database, trail: int, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(chain_rows, "CHUNK", chunk)
    seen: list[tuple[int, int]] = []

    result = check_chain(
        database,
        AuditKeys.from_settings(database.settings),
        progress=lambda done, total: seen.append((done, total)),
    )

    assert (result.ok, result.checked) == (True, trail)
    ends = [*range(chunk, trail, chunk), trail]
    assert seen == [(end, trail) for end in ends]


def test_a_missing_document_is_named_before_a_broken_hash_in_a_later_chunk(
    database: Database, trail: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chain_rows, "CHUNK", 2)
    url = database.settings.database_url
    ((missing,),) = fetch(url, "SELECT min(seq) FROM audit_evidence")
    assert (trail - 1) // 2 > (missing - 1) // 2  # the last event is in a later chunk
    ((canonical,),) = fetch(url, "SELECT canonical FROM audit_event WHERE seq = :s", {"s": trail})
    tamper(url, "DELETE FROM audit_evidence WHERE seq = :s", {"s": missing})
    tamper(
        url,
        "UPDATE audit_event SET canonical = :c WHERE seq = :s",
        {"c": bytes(canonical)[:-1] + b" ", "s": trail},
    )

    result = check_chain(database, AuditKeys.from_settings(database.settings))

    assert (result.ok, result.first_bad_seq) == (False, missing)
    assert result.detail == "its evidence document is missing and its contact was not erased"


def test_the_readers_take_no_connection_of_the_pool(
    settings: Settings, trail: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's column check and stream read beside the verifying connection, outside
    the service's pool: a pool of one (and one overflowing) could not hold all three."""
    monkeypatch.setattr(chain_rows, "CHUNK", 2)
    database = Database(settings.model_copy(update={"db_pool_size": 1}))
    pool = cast(QueuePool, database.engine.pool)
    pooled: list[int] = []
    try:
        result = check_chain(
            database,
            AuditKeys.from_settings(database.settings),
            progress=lambda _done, _total: pooled.append(pool.checkedout()),
        )
    finally:
        database.dispose()

    assert (result.ok, result.checked) == (True, trail)
    assert set(pooled) == {1}  # the verifying connection only, while the chain is read


def test_the_readers_outlive_the_statement_timeout_of_requests(settings: Settings) -> None:
    """The chain's stream is one statement as long as the whole walk: a statement timeout set
    for requests (`db_statement_timeout_s`) must not end a verification on its readers."""
    if settings.is_sqlite:
        pytest.skip("the readers are PostgreSQL's")
    timed = settings.model_copy(update={"db_statement_timeout_s": 0.2})
    database = Database(timed)
    try:
        with database.engine.connect() as verifying:
            held = verifying.execution_options(isolation_level="REPEATABLE READ")
            snapshot = held.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
            with (
                chain_rows.readers(timed) as engine,
                chain_rows.in_snapshot(engine, snapshot) as cursor,
            ):
                cursor.execute("SELECT pg_sleep(0.5)")
                assert len(cursor.fetchall()) == 1  # not cancelled by the 0.2 s timeout
            held.rollback()
    finally:
        database.dispose()
