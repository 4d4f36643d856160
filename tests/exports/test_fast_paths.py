"""The exports' PostgreSQL path held to the Python writers: CSV cells and timestamps built in
SQL against Python's csv module and `chunks.csv_timestamp`, and ranges across boundaries."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import literal, select, text, update
from sqlmodel import col

from prefcenter.apikeys.schemas import Scope
from prefcenter.bounces.models import Bounce
from prefcenter.contacts.models import Contact
from prefcenter.csv_cells import spreadsheet_safe
from prefcenter.db import Database
from prefcenter.driver import postgres_cursor
from prefcenter.exports import chunks, ranges, suppression_ranges
from prefcenter.exports.chunks import csv_timestamp
from prefcenter.exports.schemas import SUPPRESSIONS_HEADER
from tests.csv_cases import AWKWARD_CELLS, python_csv
from tests.support.factories import (
    Headers,
    make_change,
    make_contact,
    make_topic,
    record_change,
)
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
            datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC),
            datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=UTC),
            datetime(2026, 1, 2, 3, 4, 5, 123400, tzinfo=UTC),
            datetime(2026, 1, 2, 3, 4, 5, 123450, tzinfo=UTC),
            datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
            datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
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


def _collected(stream: AsyncIterator[bytes]) -> bytes:
    async def collect() -> bytes:
        return b"".join([block async for block in stream])

    return asyncio.run(collect())


class TestPostgresSuppressionsBytes:
    @pytest.mark.parametrize("bounces_or_not", [True, False])
    @pytest.mark.parametrize("plan", ["_SPARSE_PLAN", "_DENSE_PLAN"])
    def test_are_the_python_writers_bytes(
        self, monkeypatch: pytest.MonkeyPatch, database: Database, plan: str, bounces_or_not: bool
    ) -> None:
        """Every awkward address as a suppressed contact's display form, some bounced too,
        some only bounced, one erased; timestamps with and without a fraction; ranges of
        three contact ids, some without a row. Every range planned as `plan` (a probe into
        `contact` for each row, or a merge of the key indexes), and read by the statement
        for what it holds (`bounces_or_not`: the opt-outs' alone where it has no bounce) or
        by the one for opt-outs and bounces throughout; unquoted first, and again quoted
        where an address needs quotes."""
        _on_postgres(database)
        monkeypatch.setattr(ranges, "EXPORT_RANGE", 3)
        for settings in ("_SPARSE_PLAN", "_DENSE_PLAN"):
            monkeypatch.setattr(suppression_ranges, settings, getattr(suppression_ranges, plan))
        if not bounces_or_not:
            both = suppression_ranges._suppressions_range
            monkeypatch.setattr(suppression_ranges, "_opt_outs_range", both)
        statements: set[str] = set()
        run = ranges.RangeStatement.run

        def recorded(statement: ranges.RangeStatement, *args: Any, **values: Any) -> Any:
            statements.add(statement.sql)
            return run(statement, *args, **values)

        monkeypatch.setattr(ranges.RangeStatement, "run", recorded)
        base = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        with database.transaction(write=True) as session:
            for i, cell in enumerate(AWKWARD_CELLS):
                moment = base + timedelta(seconds=i, microseconds=(i % 3) * 120_000 + i % 2)
                email = f"c{i}@example.com"
                contact = make_contact(session, email, now=moment)
                assert contact.id is not None
                make_contact(session, f"not-suppressed{i}@example.com")
                if i % 4 != 3:  # every fourth is only bounced
                    make_change(session, email, "unsubscribed", occurred_at=moment, now=moment)
                session.execute(
                    update(Contact)
                    .where(col(Contact.id) == contact.id)
                    .values(address_display=cell)
                )
                if i % 2 == 0:
                    session.add(
                        Bounce(
                            contact_id=contact.id,
                            bounced=True,
                            occurred_at=moment,
                            since=moment + timedelta(microseconds=7),
                            source="admin",
                            event_id=f"bounce-{i}",
                        )
                    )
            session.execute(
                update(Contact)
                .where(col(Contact.address) == "c5@example.com")
                .values(address=None, address_display=None, erased_at=base)
            )
        python = _collected(
            chunks.stream_csv(database, SUPPRESSIONS_HEADER, chunks.read_suppressions)
        )
        reader = suppression_ranges.suppressions_range(database)
        built_by_postgres = _collected(suppression_ranges.suppressions_ranges(database))
        assert b"erased" in python
        assert b"bounced" in python
        assert built_by_postgres == python
        # Each statement read the ranges it may read (the same one throughout, or not).
        # Ranges with an address to quote were read again quoted, the others were not.
        assert statements - {reader.plan.sql} == {
            lines.sql
            for statements_ in (reader.opt_outs, reader.with_bounces)
            for lines in (statements_.unquoted, statements_.quoted)
        }
        assert (reader.opt_outs != reader.with_bounces) is bounces_or_not


_JOINS = "SELECT current_setting('enable_nestloop'), current_setting('enable_mergejoin')"


class TestPostgresSuppressionsPlan:
    def test_ranges_are_read_by_what_they_hold(
        self, monkeypatch: pytest.MonkeyPatch, database: Database
    ) -> None:
        """Ranges of ten contact ids, dense from two rows: opt-outs and bounces both count; a
        range without bounces is read by the opt-outs' statement alone; the query that asks
        sets the range's plan and says the highest contact id."""
        _on_postgres(database)
        monkeypatch.setattr(ranges, "EXPORT_RANGE", 10)
        at = datetime(2026, 1, 2, tzinfo=UTC)
        with database.transaction(write=True) as session:
            ids = []
            for i in range(40):
                contact = make_contact(session, f"d{i}@example.com", now=at)
                assert contact.id is not None
                ids.append(contact.id)
            for i in (0, 1, 12):
                make_change(session, f"d{i}@example.com", "unsubscribed", now=at)
            for i in (20, 21, 35):
                session.add(
                    Bounce(
                        contact_id=ids[i],
                        bounced=True,
                        occurred_at=at,
                        since=at,
                        source="admin",
                        event_id=f"bounce-{i}",
                    )
                )
        reader = suppression_ranges.suppressions_range(database)
        with (
            database.transaction(write=False) as session,
            closing(postgres_cursor(session.connection())) as cursor,
        ):
            choices, joins = [], []
            for first in (0, 10, 20, 30):
                choices.append(reader.choose(cursor, ids[first] - 1))
                # What the range's statement is then planned with.
                ((nestloop, mergejoin),) = cursor.execute(_JOINS).fetchall()
                joins.append((nestloop, mergejoin))
        assert [(choice.dense, choice.lines) for choice in choices] == [
            (True, reader.opt_outs),
            (False, reader.opt_outs),
            (True, reader.with_bounces),
            (False, reader.with_bounces),
        ]
        assert joins == [("off", "on"), ("on", "off"), ("off", "on"), ("on", "off")]
        assert {choice.last for choice in choices} == {ids[-1]}
        # Compiled once for the engine.
        assert suppression_ranges.suppressions_range(database) is reader


class TestPostgresRangesInFlight:
    def test_a_range_starts_as_soon_as_one_is_read(
        self, monkeypatch: pytest.MonkeyPatch, database: Database
    ) -> None:
        """Two ranges are read at once from the start, and the next starts as soon as one is
        read, not when the oldest is sent: the first range's read ends only once the third
        range is read (the second read meanwhile). Never more than three held unsent: the
        fourth waits for the first to be sent."""
        _on_postgres(database)
        monkeypatch.setattr(ranges, "EXPORT_RANGE", 2)
        at = datetime(2026, 1, 2, tzinfo=UTC)
        with database.transaction(write=True) as session:
            for i in range(9):
                make_contact(session, f"f{i}@example.com", now=at)
                make_change(session, f"f{i}@example.com", "unsubscribed", now=at)
        started: list[int] = []
        started_while_first_was_read: list[int] = []
        third_read = asyncio.Event()
        read_range = ranges._range_in_thread

        async def recorded(*args: Any) -> tuple[bytes, int]:
            low = args[-1]
            started.append(low)
            if low == 0:
                # Fails (times out) unless the third range starts and is read meanwhile.
                async with asyncio.timeout(30):
                    await third_read.wait()
                await asyncio.sleep(0.05)  # the third's end handled: a fourth would start
                started_while_first_was_read.extend(started)
            text = await read_range(*args)
            if low == 4:
                third_read.set()
            return text

        monkeypatch.setattr(ranges, "_range_in_thread", recorded)

        async def first_range() -> bytes:
            stream = suppression_ranges.suppressions_ranges(database)
            assert isinstance(stream, AsyncGenerator)
            await anext(stream)  # the header
            text: bytes = await anext(stream)
            await stream.aclose()
            return text

        first = asyncio.run(first_range())
        assert first.startswith(b"f0@example.com,")
        assert started_while_first_was_read == [0, 2, 4]
