"""The fast paths of eligibility and the exports, held to the slow, obvious answer: the stream
across chunk boundaries with several chunks in flight, CSV cells written by hand (Python) and
by PostgreSQL against Python's csv module, the state table against the rule, and the
PostgreSQL exports across range boundaries."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import literal, select, text

from prefcenter.apikeys.schemas import Scope
from prefcenter.consent.rules import Status
from prefcenter.csv_cells import spreadsheet_safe
from prefcenter.db import Database
from prefcenter.eligibility import export_streams, stream
from prefcenter.eligibility.exports import _timestamp
from prefcenter.eligibility.lookup import StateTable
from prefcenter.eligibility.rules import Eligibility, Reason, TopicModel, decide_eligibility
from prefcenter.eligibility.schemas import EligibilityOut
from prefcenter.topics.schemas import ConsentModel, TopicKind
from tests.conftest import issue_key
from tests.factories import Headers, make_topic, record_change

STREAM_HEADER = ["email", "allowed", "reason"]
# Texts that exercise every branch: formulas, quotes, commas, line breaks, non-ASCII.
AWKWARD_CELLS = (
    "",
    "ada@example.com",
    '=HYPERLINK("http://x")',
    "+1",
    "-x@example.com",
    "@sum",
    "\tx",
    "\rx",
    'a"b',
    "a,b",
    "a\r\nb",
    "a\nb",
    "'=already",
    " =x",
    "zoë@exämple.com",
)


def python_csv(*cells: str) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(cells)
    return out.getvalue()


@pytest.fixture
def checker_headers(database: Database) -> Headers:
    return issue_key(database, Scope.ELIGIBILITY, Scope.CONSENT_READ, name="sender")


class TestCsvCell:
    @pytest.mark.parametrize("cell", AWKWARD_CELLS)
    def test_is_what_the_csv_module_writes(self, cell: str) -> None:
        assert stream.csv_cell(cell) + ",x\r\n" == python_csv(spreadsheet_safe(cell), "x")

    @given(st.text(max_size=40))
    def test_any_text_is_what_the_csv_module_writes(self, cell: str) -> None:
        assert stream.csv_cell(cell) + ",x\r\n" == python_csv(spreadsheet_safe(cell), "x")


class TestStateTable:
    @pytest.mark.parametrize("kind", list(TopicKind))
    @pytest.mark.parametrize("consent", list(ConsentModel))
    def test_every_state_answers_as_the_rule(self, kind: TopicKind, consent: ConsentModel) -> None:
        model = TopicModel(kind=kind, consent=consent)
        table = StateTable(model, lambda answer: answer)
        for suppressed in (None, False, True):
            for status in (None, *Status):
                for bounced in (None, False, True):
                    expected = decide_eligibility(
                        model,
                        erased=False,
                        suppressed=bool(suppressed),
                        subscription=status,
                        bounced=bool(bounced),
                    )
                    key = (suppressed, None if status is None else status.value, bounced)
                    got: Eligibility = table[key]
                    assert got == expected
        assert table.unknown == decide_eligibility(
            model, erased=False, suppressed=False, subscription=None
        )

    def test_an_unknown_status_fails_rather_than_guesses(self) -> None:
        table = StateTable(
            TopicModel(kind=TopicKind.MARKETING, consent=ConsentModel.OPT_OUT), lambda a: a
        )
        with pytest.raises(KeyError):
            table[(False, "some_future_status", None)]


class TestStreamChunks:
    def test_rows_stay_in_order_across_many_small_chunks(
        self,
        monkeypatch: pytest.MonkeyPatch,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        checker_headers: Headers,
    ) -> None:
        """Chunks of 3 with two in flight: 40 lines cross 13 chunk boundaries."""
        monkeypatch.setattr(stream, "STREAM_CHUNK", 3)
        make_topic(client, admin_headers, "news", consent="opt_out")
        record_change(client, writer_headers, "u7@example.com", "unsubscribed", topic="news")
        record_change(client, writer_headers, "u20@example.com", "unsubscribed")
        lines = [f"u{i}@example.com" if i % 9 else f"=bad {i}" for i in range(40)]
        lines[13] = "U7@Example.COM"
        lines[14] = "zoë@exämple.com"
        response = client.post(
            "/v1/eligibility/stream",
            params={"topic": "news"},
            headers={**checker_headers, "Content-Type": "text/plain"},
            content="\n".join(lines).encode(),
        )
        assert response.status_code == 200, response.text
        rows = list(csv.reader(io.StringIO(response.text, newline="")))
        assert rows[0] == STREAM_HEADER
        expected = []
        for i, line in enumerate(lines):
            if i % 9 == 0:
                expected.append([spreadsheet_safe(line), "false", "invalid_email"])
            elif line.lower() == "u7@example.com":
                expected.append([line, "false", "unsubscribed"])
            elif i == 20:
                expected.append([line, "false", "suppressed"])
            else:
                expected.append([line, "true", "opt_out_default"])
        assert rows[1:] == expected

    def test_formula_addresses_on_the_fast_path_are_neutralised(
        self, client: TestClient, admin_headers: Headers, checker_headers: Headers
    ) -> None:
        make_topic(client, admin_headers, "news", consent="opt_out")
        body = b"=cmd@example.com\n+1@example.com\n-x@example.com\n"
        response = client.post(
            "/v1/eligibility/stream",
            params={"topic": "news"},
            headers={**checker_headers, "Content-Type": "text/plain"},
            content=body,
        )
        assert response.text.splitlines()[1:] == [
            "'=cmd@example.com,true,opt_out_default",
            "'+1@example.com,true,opt_out_default",
            "'-x@example.com,true,opt_out_default",
        ]


def _on_postgres(database: Database) -> None:
    if database.engine.dialect.name != "postgresql":
        pytest.skip("the SQL-built CSV is the PostgreSQL path")


class TestPostgresCsv:
    @pytest.mark.parametrize("cell", AWKWARD_CELLS)
    def test_cell_sql_is_what_the_csv_module_writes(self, database: Database, cell: str) -> None:
        _on_postgres(database)
        with database.transaction(write=False) as session:
            written = session.execute(select(export_streams.csv_cell_sql(literal(cell)))).scalar()
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
                select(export_streams._timestamp_sql(literal(moment))).where(text("true"))
            ).scalar()
        assert written == _timestamp(moment)


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
        monkeypatch.setattr(export_streams, "EXPORT_RANGE", 2)
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


class TestCheckEligibilityJson:
    def test_answer_is_the_documented_model(
        self, client: TestClient, admin_headers: Headers, checker_headers: Headers
    ) -> None:
        """The JSON is written without the model: it must still be exactly the model's."""
        make_topic(client, admin_headers, "news", consent="opt_out")
        emails = ["ada@example.com", "not an address", "=x@example.com", "ada@example.com"]
        response = client.post(
            "/v1/eligibility", headers=checker_headers, json={"topic": "news", "emails": emails}
        )
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        answer = EligibilityOut.model_validate_json(response.content)
        assert answer.model_dump(mode="json") == response.json()
        assert [r.email for r in answer.results] == emails
        assert [r.reason for r in answer.results] == [
            Reason.OPT_OUT_DEFAULT,
            Reason.INVALID_EMAIL,
            Reason.OPT_OUT_DEFAULT,
            Reason.OPT_OUT_DEFAULT,
        ]
