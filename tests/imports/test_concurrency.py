"""An import running while API opt-outs for the same addresses are posted (PostgreSQL, where
writers really run at once): every opt-out answered 200 is still in force at the end."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text

from prefcenter.audit.keys import AuditKeys
from prefcenter.db import Database
from prefcenter.imports.schemas import ImportReport
from prefcenter.imports.service import ImportRequest, file_sha256, run_import
from prefcenter.settings import Settings
from tests.imports.test_service import csv_file, run
from tests.support.factories import Headers, lookup, make_topic, record_change, subscription_status

ROWS = 3_000
OPTED_OUT = range(0, ROWS, 15)  # 200 addresses spread over every batch


def test_api_opt_outs_during_an_import_stay_in_force(
    database_url: str,
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    database: Database,
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite runs one writer at a time: nothing runs concurrently there")
    make_topic(client, admin_headers, "newsletter")
    body = "email,status\n" + "".join(f"c{i}@example.com,subscribed\n" for i in range(ROWS))
    binary = io.BytesIO(body.encode())
    reports: list[ImportReport] = []

    def import_file() -> None:
        request = ImportRequest(topic="newsletter", name="crm", actor="cli:test", batch_size=250)
        reports.append(run_import(database, binary, request, sha256=file_sha256(binary)))

    worker = threading.Thread(target=import_file)
    worker.start()
    for i in OPTED_OUT:
        record_change(
            client, writer_headers, f"c{i}@example.com", "unsubscribed", topic="newsletter"
        )
    worker.join()

    (report,) = reports
    assert report.complete
    emails = [f"c{i}@example.com" for i in OPTED_OUT]
    for start in range(0, len(emails), 100):
        contacts = lookup(client, admin_headers, *emails[start : start + 100])
        assert {subscription_status(c, "newsletter") for c in contacts} == {"unsubscribed"}
    # Whatever came first, an opt-out was never reversed.
    assert report.applied.subscribed + report.refused_reversal.count == ROWS


def _wait_for_a_lock_wait(database: Database, *, but: int) -> None:
    """Until a backend other than `but` waits for a row lock (an import's batch)."""
    deadline = time.monotonic() + 30.0
    with database.engine.connect() as watcher:
        while time.monotonic() < deadline:
            waiting = watcher.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> :but"
                ),
                {"but": but},
            ).scalar_one()
            if waiting:
                return
            watcher.rollback()  # the server's view of its backends is kept for a transaction
            time.sleep(0.01)
    raise AssertionError("the import never waited for the contact's lock")


@contextmanager
def _import_waiting_for_the_lock(
    holder: Connection, database: Database
) -> Iterator[tuple[int, list[ImportReport]]]:
    """The holder locks ada@example.com's contact, and an import of `ada@example.com,subscribed`
    runs until its batch waits for that lock. The block gets the contact's id and the list the
    report lands in; it writes on the holder and commits, and the import ends after it."""
    contact_id = holder.execute(
        text("SELECT id FROM contact WHERE address = 'ada@example.com' FOR UPDATE")
    ).scalar_one()
    reports: list[ImportReport] = []
    importing = threading.Thread(
        target=lambda: reports.append(
            run(database, csv_file("ada@example.com,subscribed"), topic="newsletter")
        )
    )
    importing.start()
    try:
        _wait_for_a_lock_wait(
            database, but=holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
        )
        yield contact_id, reports
    finally:
        holder.rollback()  # nothing, once the block has committed; else the import goes on
        importing.join(30.0)


def test_an_opt_out_committed_while_the_import_waits_for_its_lock_is_read(
    database_url: str,
    client: TestClient,
    admin_headers: Headers,
    database: Database,
) -> None:
    # A writer holds the contact's lock (as every API writer takes it first) when the import's
    # batch comes to lock it; the writer stores an opt-out and commits; the batch then decides
    # on that opt-out, not on the state from before its wait.
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite runs one writer at a time: nothing runs concurrently there")
    make_topic(client, admin_headers, "newsletter")
    with database.engine.connect() as writer:
        writer.execute(
            text(
                "INSERT INTO contact (public_id, address, address_display, created_at) "
                "VALUES ('ada-public-id-001', 'ada@example.com', 'ada@example.com', now())"
            )
        )
        writer.commit()
        with _import_waiting_for_the_lock(writer, database) as (contact_id, reports):
            writer.execute(
                text(
                    "INSERT INTO subscription (contact_id, topic_id, status, occurred_at, since, "
                    "source, by_recipient, event_id) SELECT :contact, id, 'unsubscribed', now(), "
                    "now(), 'api', true, 'the-opt-out' FROM topic WHERE key = 'newsletter'"
                ),
                {"contact": contact_id},
            )
            writer.commit()

    (report,) = reports
    assert report.complete
    assert report.applied.subscribed == 0
    (contact,) = lookup(client, admin_headers, "ada@example.com")
    assert subscription_status(contact, "newsletter") == "unsubscribed"


def test_an_erasure_committed_while_the_import_waits_for_its_lock_is_kept(
    database_url: str,
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    database: Database,
    settings: Settings,
) -> None:
    # An erasure holds the contact's lock when the import's batch comes to lock it; it takes
    # the address out of the contact and keeps its keyed hash, and commits. The batch must
    # not store the address again as a new contact: the row is refused as erased.
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite runs one writer at a time: nothing runs concurrently there")
    make_topic(client, admin_headers, "newsletter")
    record_change(client, writer_headers, "ada@example.com", "subscribed", topic="newsletter")
    with (
        database.engine.connect() as eraser,
        _import_waiting_for_the_lock(eraser, database) as (contact_id, reports),
    ):
        # What consent.erasure writes of the contact and its address.
        eraser.execute(
            text(
                "UPDATE contact SET address = NULL, address_display = NULL, erased_at = now() "
                "WHERE id = :contact"
            ),
            {"contact": contact_id},
        )
        eraser.execute(
            text("INSERT INTO erased_address (address_hash, erased_at) VALUES (:hash, now())"),
            {"hash": AuditKeys.from_settings(settings).address_hash("ada@example.com")},
        )
        eraser.commit()

    (report,) = reports
    assert report.complete
    assert report.refused_erased.count == 1
    assert report.applied.subscribed == 0
    with database.engine.connect() as reader:
        stored = reader.execute(
            text("SELECT count(*) FROM contact WHERE address = 'ada@example.com'")
        ).scalar_one()
    assert stored == 0
