"""Two batches of an import in flight at once on PostgreSQL (imports.pipeline): the next batch
is written while the one before it commits, and yet the batches land, chain and report as one
at a time would have them."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import text
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, col, select

from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.models import AuditEvent
from prefcenter.audit.verify import check_chain
from prefcenter.consent.ledger import bulk
from prefcenter.db import Database
from prefcenter.imports import apply, pipeline
from prefcenter.imports.apply import BatchContext, Tally
from prefcenter.imports.prepare import PreparedBatch
from prefcenter.imports.schemas import BatchStatus, ImportReport
from prefcenter.settings import Settings
from tests.imports.test_service import csv_file, run, topic  # noqa: F401  (a fixture)

# Long enough never to be reached when the code works; only a broken run waits it out.
_NEVER = 60.0


@pytest.fixture(autouse=True)
def _postgres_only(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite's writers take turns: its batches run one at a time")


def _events(database: Database) -> list[tuple[int, str | None]]:
    with database.transaction(write=False) as session:
        rows = session.exec(
            select(AuditEvent.seq, AuditEvent.to_status)
            .where(col(AuditEvent.source) == "import")
            .order_by(col(AuditEvent.seq))
        ).all()
    return [(seq, to_status) for seq, to_status in rows]


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """What the batches did, in order: `apply N` when batch N starts its writes, `commit N`
    when it commits. Batch 1 commits only once batch 2 has started, which only happens if
    they are in flight together."""
    log: list[str] = []
    started: dict[int, threading.Event] = {n: threading.Event() for n in range(1, 10)}
    original = apply.apply_batch

    def apply_batch(
        session: Session, batch: PreparedBatch, shared: BatchContext, tally: Tally
    ) -> None:
        number = batch.rows[0].line // 2  # two rows a batch, the header on line 1
        session.info["test_batch"] = number
        log.append(f"apply {number}")
        started[number].set()
        original(session, batch, shared, tally)

    def before_commit(session: OrmSession) -> None:
        number = session.info.get("test_batch")
        if number == 1:
            started[2].wait(_NEVER)

    def after_commit(session: OrmSession) -> None:
        number = session.info.get("test_batch")
        if number is not None:
            log.append(f"commit {number}")

    monkeypatch.setattr(pipeline, "apply_batch", apply_batch)
    sa_event.listen(OrmSession, "before_commit", before_commit)
    sa_event.listen(OrmSession, "after_commit", after_commit)
    try:
        yield log
    finally:
        sa_event.remove(OrmSession, "before_commit", before_commit)
        sa_event.remove(OrmSession, "after_commit", after_commit)


def test_the_next_batch_is_written_while_one_commits_and_the_chain_follows_the_file(
    database: Database,
    settings: Settings,
    topic: str,  # noqa: F811
    steps: list[str],
) -> None:
    rows = [f"p{i}@example.com,{'unsubscribed' if i % 3 else 'subscribed'}" for i in range(6)]

    report = run(database, csv_file(*rows), batch_size=2)

    assert steps.index("apply 2") < steps.index("commit 1")
    assert [s for s in steps if s.startswith("commit")] == ["commit 1", "commit 2", "commit 3"]
    assert [(b.number, b.status) for b in report.batches] == [
        (n, BatchStatus.COMMITTED) for n in (1, 2, 3)
    ]
    # One event per row, in file order along the chain, and the chain holds.
    expected = ["unsubscribed" if i % 3 else "subscribed" for i in range(6)]
    assert [to_status for _, to_status in _events(database)] == expected
    assert check_chain(database, AuditKeys.from_settings(settings)).ok


def test_an_address_in_the_batch_before_waits_for_its_commit(
    database: Database,
    topic: str,  # noqa: F811
) -> None:
    # Each batch decides against the state the one before it left, even for its addresses.
    report = run(
        database,
        csv_file(
            "ada@example.com,subscribed",
            "bob@example.com,subscribed",
            "ada@example.com,unsubscribed",
            "bob@example.com,subscribed",
            "ada@example.com,subscribed",
            "bob@example.com,unsubscribed",
        ),
        batch_size=2,
    )

    assert report.complete
    assert (report.applied.subscribed, report.applied.unsubscribed) == (2, 2)
    assert report.refused_reversal.count == 1  # ada's opt-out stays
    assert report.unchanged == 1  # bob's second opt-in
    assert [s for _, s in _events(database)] == [
        "subscribed",
        "subscribed",
        "unsubscribed",
        "unsubscribed",
    ]


def test_two_imports_at_once_both_land_and_the_chain_holds(
    database: Database,
    settings: Settings,
    topic: str,  # noqa: F811
) -> None:
    # Each holds the import lock for its whole run: the other's batches wait, nothing
    # deadlocks, and every row of both lands.
    files = [
        csv_file(*[f"p{i}@example.com,subscribed" for i in range(40)]),
        csv_file(*[f"p{i}@example.com,subscribed" for i in range(20, 60)]),
    ]
    reports: list[ImportReport] = []
    threads = [
        threading.Thread(target=lambda data=data: reports.append(run(database, data, batch_size=7)))
        for data in files
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [r.complete for r in reports] == [True, True]
    assert sum(r.applied.subscribed for r in reports) == 60
    # The other's row came first: the same status (unchanged) or a later time (superseded).
    assert sum(r.unchanged + r.superseded.count for r in reports) == 20
    assert len(_events(database)) == 60
    assert check_chain(database, AuditKeys.from_settings(settings)).ok


def test_an_import_waits_for_another_past_the_lock_timeout(
    settings: Settings,
    topic: str,  # noqa: F811
) -> None:
    # Another import holds the lock for longer than a request may wait for a row lock: this
    # one waits its turn instead of failing on `lock_timeout`.
    database = Database(settings.model_copy(update={"db_lock_timeout_s": 0.2}))
    try:
        reports: list[ImportReport] = []
        with database.engine.connect() as holder:
            holder.execute(text("SELECT pg_advisory_lock(:id)"), {"id": bulk._IMPORT_LOCK_ID})
            waiting = threading.Thread(
                target=lambda: reports.append(
                    run(database, csv_file("ada@example.com,subscribed"), batch_size=2)
                )
            )
            waiting.start()
            waiting.join(1.0)  # five times the lock timeout
            assert waiting.is_alive()
            assert reports == []
            holder.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": bulk._IMPORT_LOCK_ID})
            waiting.join(_NEVER)
        assert [r.complete for r in reports] == [True]
        assert reports[0].applied.subscribed == 1
    finally:
        database.dispose()
