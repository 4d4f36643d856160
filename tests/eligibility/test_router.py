"""`POST /v1/eligibility` and `POST /v1/eligibility/stream` over HTTP, on both engines: every
reason, read-your-writes after an opt-out, order, duplicates, invalid lines, limits, CSV bodies,
and a 200,000-address stream in bounded memory."""

from __future__ import annotations

import csv
import io
import resource
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from prefcenter.apikeys.schemas import Scope
from prefcenter.app import create_app
from prefcenter.csv_cells import spreadsheet_safe
from prefcenter.db import Database
from prefcenter.eligibility.schemas import MAX_ELIGIBILITY
from prefcenter.settings import Settings
from tests.support.factories import (
    Headers,
    Json,
    assert_problem,
    issue_links,
    make_topic,
    record_change,
)
from tests.support.harness import issue_key

ADA = "ada@example.com"
GRACE = "grace@example.com"
STREAM_HEADER = ["email", "allowed", "reason"]
# Peak RSS growth allowed while 200,000 addresses stream through the app in this process. The
# request body alone is ~5 MB (the test client reads it whole before sending); the service
# holds at most two chunks (20,000 addresses each) and the one being read, so its share is a
# few MB whatever the size.
MAX_STREAM_RSS_GROWTH_MB = 100
STREAM_SIZE = 200_000


@pytest.fixture
def checker_headers(database: Database) -> Headers:
    return issue_key(database, Scope.ELIGIBILITY, name="sender")


@pytest.fixture
def links_headers(database: Database) -> Headers:
    return issue_key(database, Scope.LINKS, name="links")


def check(client: TestClient, headers: Headers, topic: str, *emails: str) -> list[Json]:
    response = client.post(
        "/v1/eligibility", headers=headers, json={"topic": topic, "emails": list(emails)}
    )
    assert response.status_code == 200, response.text
    results: list[Json] = response.json()["results"]
    assert [r["email"] for r in results] == list(emails)
    return results


def reason_of(client: TestClient, headers: Headers, topic: str, email: str) -> tuple[bool, str]:
    (result,) = check(client, headers, topic, email)
    return result["allowed"], result["reason"]


def stream(
    client: TestClient,
    headers: Headers,
    topic: str,
    body: bytes,
    content_type: str = "text/plain",
) -> list[list[str]]:
    """The answer's rows, header first."""
    response = client.post(
        "/v1/eligibility/stream",
        params={"topic": topic},
        headers={**headers, "Content-Type": content_type},
        content=body,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text, newline="")))
    assert rows[0] == STREAM_HEADER
    return rows


def marketing_topic(
    client: TestClient, admin: Headers, consent: str, *, double_opt_in: bool = False
) -> str:
    key = f"news-{consent.replace('_', '-')}"
    make_topic(client, admin, key, consent=consent, double_opt_in=double_opt_in)
    return key


CONSENT_MODELS = ("opt_in", "opt_out")


class TestReasons:
    """One test per reason, for both consent models where the reason can arise in both."""

    @pytest.mark.parametrize("consent", CONSENT_MODELS)
    def test_subscribed(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        checker_headers: Headers,
        consent: str,
    ) -> None:
        topic = marketing_topic(client, admin_headers, consent)
        record_change(client, writer_headers, ADA, "subscribed", topic=topic)
        assert reason_of(client, checker_headers, topic, ADA) == (True, "subscribed")

    def test_opt_out_default(
        self, client: TestClient, admin_headers: Headers, checker_headers: Headers
    ) -> None:
        topic = marketing_topic(client, admin_headers, "opt_out")
        assert reason_of(client, checker_headers, topic, ADA) == (True, "opt_out_default")

    def test_not_subscribed(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        checker_headers: Headers,
    ) -> None:
        topic = marketing_topic(client, admin_headers, "opt_in")
        other = marketing_topic(client, admin_headers, "opt_out")
        # Known (subscribed to another topic) or unknown: both not subscribed to this one.
        record_change(client, writer_headers, ADA, "subscribed", topic=other)
        results = check(client, checker_headers, topic, ADA, GRACE)
        assert [(r["allowed"], r["reason"]) for r in results] == [(False, "not_subscribed")] * 2

    @pytest.mark.parametrize("consent", CONSENT_MODELS)
    def test_transactional_ignores_marketing_opt_outs(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        checker_headers: Headers,
        consent: str,
    ) -> None:
        make_topic(client, admin_headers, "receipts", kind="transactional", consent=consent)
        record_change(client, writer_headers, ADA, "unsubscribed")
        results = check(client, checker_headers, "receipts", ADA, GRACE)
        assert [(r["allowed"], r["reason"]) for r in results] == [(True, "transactional")] * 2

    @pytest.mark.parametrize("consent", CONSENT_MODELS)
    def test_unsubscribed(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        checker_headers: Headers,
        consent: str,
    ) -> None:
        topic = marketing_topic(client, admin_headers, consent)
        record_change(client, writer_headers, ADA, "subscribed", topic=topic)
        record_change(client, writer_headers, ADA, "unsubscribed", topic=topic)
        assert reason_of(client, checker_headers, topic, ADA) == (False, "unsubscribed")

    @pytest.mark.parametrize("consent", CONSENT_MODELS)
    def test_pending(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        checker_headers: Headers,
        consent: str,
    ) -> None:
        topic = marketing_topic(client, admin_headers, consent, double_opt_in=True)
        record_change(client, writer_headers, ADA, "subscribed", topic=topic)
        assert reason_of(client, checker_headers, topic, ADA) == (False, "pending")

    @pytest.mark.parametrize("consent", CONSENT_MODELS)
    def test_suppressed(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        checker_headers: Headers,
        consent: str,
    ) -> None:
        topic = marketing_topic(client, admin_headers, consent)
        record_change(client, writer_headers, ADA, "subscribed", topic=topic)
        record_change(client, writer_headers, ADA, "unsubscribed")
        assert reason_of(client, checker_headers, topic, ADA) == (False, "suppressed")

    def test_unknown_topic_answers_every_line(
        self, client: TestClient, checker_headers: Headers
    ) -> None:
        results = check(client, checker_headers, "no-such-topic", ADA, "not an address", ADA)
        assert [(r["allowed"], r["reason"]) for r in results] == [(False, "unknown_topic")] * 3

    @pytest.mark.parametrize("consent", CONSENT_MODELS)
    def test_invalid_email(
        self,
        client: TestClient,
        admin_headers: Headers,
        checker_headers: Headers,
        consent: str,
    ) -> None:
        topic = marketing_topic(client, admin_headers, consent)
        bad = ["", "not an address", "ada@", "a\r\nb@example.com", "ada@example.com\x00", "x" * 300]
        results = check(client, checker_headers, topic, *bad)
        assert [(r["allowed"], r["reason"]) for r in results] == [(False, "invalid_email")] * 6


class TestEligibility:
    def test_opt_out_counts_in_the_next_request(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        checker_headers: Headers,
    ) -> None:
        topic = marketing_topic(client, admin_headers, "opt_out")
        assert reason_of(client, checker_headers, topic, ADA) == (True, "opt_out_default")
        record_change(client, writer_headers, ADA, "unsubscribed", topic=topic)
        assert reason_of(client, checker_headers, topic, ADA) == (False, "unsubscribed")

    @pytest.mark.parametrize(
        ("scope", "reason"), [("topic", "unsubscribed"), ("all", "suppressed")]
    )
    def test_one_click_counts_in_the_next_request(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        checker_headers: Headers,
        links_headers: Headers,
        scope: str,
        reason: str,
    ) -> None:
        topic = marketing_topic(client, admin_headers, "opt_in")
        record_change(client, writer_headers, ADA, "subscribed", topic=topic)
        fields = {"topic": topic} if scope == "topic" else {}
        links = issue_links(client, links_headers, ADA, **fields)

        clicked = client.post(
            links["unsubscribe_url"],
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            content=b"List-Unsubscribe=One-Click",
        )

        assert clicked.status_code == 200, clicked.text
        assert reason_of(client, checker_headers, topic, ADA) == (False, reason)
        rows = stream(client, checker_headers, topic, f"{ADA}\n".encode())
        assert rows[1:] == [[ADA, "false", reason]]

    def test_order_duplicates_and_case_are_kept(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        checker_headers: Headers,
    ) -> None:
        topic = marketing_topic(client, admin_headers, "opt_in")
        record_change(client, writer_headers, ADA, "subscribed", topic=topic)
        emails = [GRACE, "ADA@Example.COM", "bad", ADA, GRACE, "bad", ADA]
        results = check(client, checker_headers, topic, *emails)
        assert [r["reason"] for r in results] == [
            "not_subscribed",
            "subscribed",
            "invalid_email",
            "subscribed",
            "not_subscribed",
            "invalid_email",
            "subscribed",
        ]

    def test_full_batch_is_answered(
        self, client: TestClient, admin_headers: Headers, checker_headers: Headers
    ) -> None:
        topic = marketing_topic(client, admin_headers, "opt_out")
        emails = [f"user{i}@example.com" for i in range(MAX_ELIGIBILITY)]
        results = check(client, checker_headers, topic, *emails)
        assert {r["reason"] for r in results} == {"opt_out_default"}

    def test_more_than_the_limit_is_413(
        self, client: TestClient, admin_headers: Headers, checker_headers: Headers
    ) -> None:
        topic = marketing_topic(client, admin_headers, "opt_out")
        emails = [f"user{i}@example.com" for i in range(MAX_ELIGIBILITY + 1)]
        response = client.post(
            "/v1/eligibility", headers=checker_headers, json={"topic": topic, "emails": emails}
        )
        assert_problem(response, 413, "payload-too-large")

    def test_needs_the_eligibility_scope(self, client: TestClient, writer_headers: Headers) -> None:
        response = client.post(
            "/v1/eligibility", headers=writer_headers, json={"topic": "t", "emails": [ADA]}
        )
        assert_problem(response, 403, "forbidden")

    def test_database_error_answers_nothing_allowed(
        self,
        settings: Settings,
        database: Database,
        client: TestClient,
        admin_headers: Headers,
        checker_headers: Headers,
    ) -> None:
        topic = marketing_topic(client, admin_headers, "opt_out")
        with (
            TestClient(create_app(settings), raise_server_exceptions=False) as failing,
            missing_table(database, "subscription"),
        ):
            response = failing.post(
                "/v1/eligibility", headers=checker_headers, json={"topic": topic, "emails": [ADA]}
            )
            streamed = failing.post(
                "/v1/eligibility/stream",
                params={"topic": topic},
                headers={**checker_headers, "Content-Type": "text/plain"},
                content=ADA.encode(),
            )
        assert response.status_code in (500, 503)
        assert "allowed" not in response.text
        # The stream had started: it is cut short after its header, with no row answered.
        assert "true" not in streamed.text
        assert ADA not in streamed.text


@contextmanager
def missing_table(database: Database, table: str) -> Iterator[None]:
    """A real database failure: the table is renamed away for the block."""
    with database.engine.begin() as connection:
        connection.execute(text(f"ALTER TABLE {table} RENAME TO {table}_away"))
    try:
        yield
    finally:
        with database.engine.begin() as connection:
            connection.execute(text(f"ALTER TABLE {table}_away RENAME TO {table}"))


class TestStream:
    def test_plain_lines_in_order(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        checker_headers: Headers,
    ) -> None:
        topic = marketing_topic(client, admin_headers, "opt_in")
        record_change(client, writer_headers, ADA, "subscribed", topic=topic)
        body = f"{GRACE}\r\n\r\n  {ADA}  \nnot an address\n{GRACE}\n{ADA}".encode()
        rows = stream(client, checker_headers, topic, body)
        assert rows[1:] == [
            [GRACE, "false", "not_subscribed"],
            [ADA, "true", "subscribed"],
            ["not an address", "false", "invalid_email"],
            [GRACE, "false", "not_subscribed"],
            [ADA, "true", "subscribed"],
        ]

    def test_opt_out_counts_in_the_next_stream(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        checker_headers: Headers,
    ) -> None:
        topic = marketing_topic(client, admin_headers, "opt_out")
        assert stream(client, checker_headers, topic, ADA.encode())[1:] == [
            [ADA, "true", "opt_out_default"]
        ]
        record_change(client, writer_headers, ADA, "unsubscribed", topic=topic)
        assert stream(client, checker_headers, topic, ADA.encode())[1:] == [
            [ADA, "false", "unsubscribed"]
        ]

    def test_csv_with_bom_crlf_and_quotes(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        checker_headers: Headers,
    ) -> None:
        topic = marketing_topic(client, admin_headers, "opt_in")
        record_change(client, writer_headers, ADA, "subscribed", topic=topic)
        body = (
            '\ufeffname,"Email"\r\n'
            f'"Lovelace, Ada","{ADA}"\r\n'
            f"Grace,{GRACE}\r\n"
            "\r\n"
            '"Nobody ""quoted""",\r\n'
            "Short row\r\n"
        ).encode()
        rows = stream(client, checker_headers, topic, body, "text/csv; charset=utf-8")
        assert rows[1:] == [
            [ADA, "true", "subscribed"],
            [GRACE, "false", "not_subscribed"],
            ["", "false", "invalid_email"],
            ["", "false", "invalid_email"],
        ]

    def test_csv_without_email_column_is_422(
        self, client: TestClient, admin_headers: Headers, checker_headers: Headers
    ) -> None:
        topic = marketing_topic(client, admin_headers, "opt_in")
        response = client.post(
            "/v1/eligibility/stream",
            params={"topic": topic},
            headers={**checker_headers, "Content-Type": "text/csv"},
            content=f"address\n{ADA}\n".encode(),
        )
        assert_problem(response, 422, "missing-email-column")

    def test_empty_body_answers_the_header(
        self, client: TestClient, admin_headers: Headers, checker_headers: Headers
    ) -> None:
        topic = marketing_topic(client, admin_headers, "opt_in")
        assert stream(client, checker_headers, topic, b"") == [STREAM_HEADER]
        assert stream(client, checker_headers, topic, b"", "text/csv") == [STREAM_HEADER]

    def test_unknown_topic_is_404_before_streaming(
        self, client: TestClient, checker_headers: Headers
    ) -> None:
        response = client.post(
            "/v1/eligibility/stream",
            params={"topic": "no-such-topic"},
            headers={**checker_headers, "Content-Type": "text/plain"},
            content=ADA.encode(),
        )
        assert_problem(response, 404, "topic-not-found")

    def test_other_media_types_are_415(
        self, client: TestClient, admin_headers: Headers, checker_headers: Headers
    ) -> None:
        topic = marketing_topic(client, admin_headers, "opt_in")
        response = client.post(
            "/v1/eligibility/stream",
            params={"topic": topic},
            headers={**checker_headers, "Content-Type": "application/json"},
            content=b'["ada@example.com"]',
        )
        assert_problem(response, 415, "unsupported-media-type")

    def test_cells_are_spreadsheet_safe(
        self, client: TestClient, admin_headers: Headers, checker_headers: Headers
    ) -> None:
        topic = marketing_topic(client, admin_headers, "opt_out")
        body = b"=cmd@example.com\n+1@example.com\n-x@example.com\n@sum(a1)\n"
        rows = stream(client, checker_headers, topic, body)
        assert rows[1:] == [
            ["'=cmd@example.com", "true", "opt_out_default"],
            ["'+1@example.com", "true", "opt_out_default"],
            ["'-x@example.com", "true", "opt_out_default"],
            ["'@sum(a1)", "false", "invalid_email"],
        ]

    def test_broken_bytes_are_an_invalid_line(
        self, client: TestClient, admin_headers: Headers, checker_headers: Headers
    ) -> None:
        topic = marketing_topic(client, admin_headers, "opt_out")
        body = b"\xff\xfe@example.com\n" + b"x" * 10_000 + b"\n" + ADA.encode()
        rows = stream(client, checker_headers, topic, body)
        assert [row[1:] for row in rows[1:]] == [
            ["false", "invalid_email"],
            ["false", "invalid_email"],
            ["true", "opt_out_default"],
        ]


def _stream_line(i: int) -> str:
    return f"not an address {i}" if i % 1000 == 999 else f"user{i}@example.com"


def _expected_row(i: int, unsubscribed: set[int]) -> str:
    if i % 1000 == 999:
        return f"not an address {i},false,invalid_email"
    reason = "unsubscribed" if i in unsubscribed else "opt_out_default"
    allowed = "false" if i in unsubscribed else "true"
    return f"user{i}@example.com,{allowed},{reason}"


def _stream_body() -> Iterator[bytes]:
    batch: list[str] = []
    for i in range(STREAM_SIZE):
        batch.append(_stream_line(i))
        if len(batch) == 1000:
            yield ("\n".join(batch) + "\n").encode()
            batch = []


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def test_stream_of_200k_addresses_in_order_in_bounded_memory(
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    checker_headers: Headers,
) -> None:
    topic = marketing_topic(client, admin_headers, "opt_out")
    unsubscribed = {7, 4_999, 5_000, 123_456, STREAM_SIZE - 1}
    for i in unsubscribed:
        record_change(client, writer_headers, f"user{i}@example.com", "unsubscribed", topic=topic)
    before = _peak_rss_mb()

    answered = 0
    with client.stream(
        "POST",
        "/v1/eligibility/stream",
        params={"topic": topic},
        headers={**checker_headers, "Content-Type": "text/plain"},
        content=_stream_body(),
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines) == ",".join(STREAM_HEADER)
        for i, line in enumerate(lines):
            assert line == _expected_row(i, unsubscribed), i
            answered += 1

    growth = _peak_rss_mb() - before
    assert answered == STREAM_SIZE
    assert growth < MAX_STREAM_RSS_GROWTH_MB, f"peak RSS grew {growth:.0f} MB"


def test_spreadsheet_safe() -> None:
    for cell in ("=1+1", "+1", "-1", "@x", "\tx", "\rx"):
        assert spreadsheet_safe(cell) == "'" + cell
    for cell in ("ada@example.com", "", "'=already", " =x"):
        assert spreadsheet_safe(cell) == cell
