"""The exports' PostgreSQL path held to the Python writers: CSV cells and timestamps built in
SQL against Python's csv module and `chunks.csv_timestamp`, and ranges across boundaries."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import literal, select, text

from prefcenter.apikeys.schemas import Scope
from prefcenter.csv_cells import spreadsheet_safe
from prefcenter.db import Database
from prefcenter.exports import ranges
from prefcenter.exports.chunks import csv_timestamp
from tests.csv_cases import AWKWARD_CELLS, python_csv
from tests.support.factories import Headers, make_topic, record_change
from tests.support.harness import issue_key


@pytest.fixture
def checker_headers(database: Database) -> Headers:
    return issue_key(database, Scope.ELIGIBILITY, Scope.CONSENT_READ, name="sender")


def _on_postgres(database: Database) -> None:
    if database.engine.dialect.name != "postgresql":
        pytest.skip("the SQL-built CSV is the PostgreSQL path")


class TestPostgresCsv:
    @pytest.mark.parametrize("cell", AWKWARD_CELLS)
    def test_cell_sql_is_what_the_csv_module_writes(self, database: Database, cell: str) -> None:
        _on_postgres(database)
        with database.transaction(write=False) as session:
            written = session.execute(select(ranges.csv_cell_sql(literal(cell)))).scalar()
        assert f"{written},x\r\n" == python_csv(spreadsheet_safe(cell), "x")

    @pytest.mark.parametrize(
        "moment",
        [
            datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC),
            datetime(2026, 11, 25, 10, 0, 0, 1, tzinfo=UTC),
            datetime(2026, 1, 2, 3, 4, 5, 678900, tzinfo=UTC),
            datetime(2026, 1, 2, 3, 4, 5, 100000, tzinfo=UTC),
        ],
    )
    def test_timestamp_sql_is_what_python_writes(
        self, database: Database, moment: datetime
    ) -> None:
        _on_postgres(database)
        with database.transaction(write=False) as session:
            written = session.execute(
                select(ranges.timestamp_sql(literal(moment))).where(text("true"))
            ).scalar()
        assert written == csv_timestamp(moment)


class TestPostgresExportRanges:
    def test_exports_cross_range_boundaries(
        self,
        monkeypatch: pytest.MonkeyPatch,
        client: TestClient,
        database: Database,
        admin_headers: Headers,
        writer_headers: Headers,
        checker_headers: Headers,
    ) -> None:
        """Ranges of two contact ids: seven contacts span four ranges, some of them empty."""
        monkeypatch.setattr(ranges, "EXPORT_RANGE", 2)
        make_topic(client, admin_headers, "news", consent="opt_out")
        emails = [f"=r{i}@example.com" for i in range(7)]
        for i, email in enumerate(emails):
            change = "unsubscribed" if i in (1, 2, 5) else "subscribed"
            record_change(client, writer_headers, email, change, topic="news")
        for i in (1, 2, 5):
            record_change(client, writer_headers, emails[i], "unsubscribed")
        suppressions = client.get("/v1/suppressions", headers=checker_headers)
        audience = client.get("/v1/topics/news/audience", headers=checker_headers)
        suppressed = [row[0] for row in csv.reader(io.StringIO(suppressions.text))][1:]
        allowed = [row[0] for row in csv.reader(io.StringIO(audience.text))][1:]
        assert suppressed == [spreadsheet_safe(emails[i]) for i in (1, 2, 5)]
        assert allowed == [spreadsheet_safe(emails[i]) for i in (0, 3, 4, 6)]
        assert suppressions.text.endswith("\r\n")
        assert audience.text.endswith("\r\n")
