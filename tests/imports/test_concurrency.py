"""An import running while API opt-outs for the same addresses are posted (PostgreSQL, where
writers really run at once): every opt-out answered 200 is still in force at the end."""

from __future__ import annotations

import io
import threading

import pytest
from fastapi.testclient import TestClient

from prefcenter.db import Database
from prefcenter.imports.schemas import ImportReport
from prefcenter.imports.service import ImportRequest, file_sha256, run_import
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
