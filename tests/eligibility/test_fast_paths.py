"""The fast paths of eligibility, held to the slow, obvious answer: the stream across chunk
boundaries with several chunks in flight, `POST /v1/eligibility` across chunk boundaries against
one call per address, CSV cells written by hand against Python's csv module, the state table
against the rule, and the short cut for texts without an @-sign against email-validator."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import event

from prefcenter.apikeys.schemas import Scope
from prefcenter.app import create_app
from prefcenter.consent.rules import Status
from prefcenter.contacts.addresses import InvalidAddress, parse_address
from prefcenter.csv_cells import spreadsheet_safe
from prefcenter.db import Database
from prefcenter.eligibility import lookup, service, stream
from prefcenter.eligibility.lookup import StateTable
from prefcenter.eligibility.rules import Eligibility, Reason, TopicModel, decide_eligibility
from prefcenter.eligibility.schemas import EligibilityOut
from prefcenter.topics.schemas import ConsentModel, TopicKind
from tests.csv_cases import AWKWARD_CELLS, python_csv
from tests.support.factories import Headers, make_topic, record_change
from tests.support.harness import issue_key, make_settings

STREAM_HEADER = ["email", "allowed", "reason"]


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
                    for reconsent in (False, True):
                        expected = decide_eligibility(
                            model,
                            erased=False,
                            suppressed=bool(suppressed),
                            subscription=status,
                            bounced=bool(bounced),
                            reconsent=reconsent,
                        )
                        value = None if status is None else status.value
                        got: Eligibility = table[(suppressed, value, bounced, reconsent)]
                        assert got == expected
        assert table.unknown == decide_eligibility(
            model, erased=False, suppressed=False, subscription=None
        )

    def test_an_unknown_status_fails_rather_than_guesses(self) -> None:
        table = StateTable(
            TopicModel(kind=TopicKind.MARKETING, consent=ConsentModel.OPT_OUT), lambda a: a
        )
        with pytest.raises(KeyError):
            table[(False, "some_future_status", None, False)]


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


class TestCheckEligibilityChunks:
    def test_answers_across_chunks_are_each_address_answered_alone(
        self,
        monkeypatch: pytest.MonkeyPatch,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        checker_headers: Headers,
        database_url: str,
    ) -> None:
        """Chunks of 2, then of 3 (one in flight while the next is prepared): every kind of
        answer, on both sides of chunk boundaries, and a chunk of invalid lines only (5-7),
        byte for byte what one call per address answers (one chunk each); the same with the
        chunks split over two connections (lookup.SPLIT_AT), and with a pool that has none to
        spare."""
        make_topic(client, admin_headers, "news", consent="opt_in")
        record_change(client, writer_headers, "sub@example.com", "subscribed", topic="news")
        record_change(client, writer_headers, "unsub@example.com", "unsubscribed", topic="news")
        record_change(client, writer_headers, "optout@example.com", "unsubscribed")
        gone = record_change(client, writer_headers, "gone@example.com", "subscribed", topic="news")
        response = client.delete(f"/v1/contacts/{gone['contact_id']}", headers=admin_headers)
        assert response.status_code == 200, response.text
        record_change(client, writer_headers, "zoë@exämple.com", "subscribed", topic="news")
        emails = [
            "sub@example.com",
            "SUB@Example.COM",
            "unsub@example.com",
            "optout@example.com",
            "gone@example.com",
            "no address",
            "a@b@example.com",
            "",
            "Gone@Example.com",
            "nobody@example.com",
            "zoë@exämple.com",
            "ZOË@EXÄMPLE.COM",
            "sub@example.com",
            "=x@example.com",
        ]

        def answer(*asked: str, via: TestClient = client) -> bytes:
            response = via.post(
                "/v1/eligibility",
                headers=checker_headers,
                json={"topic": "news", "emails": list(asked)},
            )
            assert response.status_code == 200, response.text
            return response.content

        alone = [orjson.loads(answer(email))["results"][0] for email in emails]
        monkeypatch.setattr(service, "FIRST_CHUNK", 2)
        monkeypatch.setattr(service, "CALL_CHUNK", 3)
        checkouts: list[object] = []

        def counted(call: Callable[[], bytes]) -> tuple[bytes, int]:
            """The answer, and how many connections the pool handed out for it."""
            before = len(checkouts)
            answered = call()
            return answered, len(checkouts) - before

        engine = client.app.state.database.engine  # type: ignore[attr-defined]
        event.listen(engine, "checkout", lambda *_: checkouts.append(None))
        together, one = counted(lambda: answer(*emails))
        # Chunks of 3 split in two halves, the second on a second connection (PostgreSQL).
        monkeypatch.setattr(lookup, "SPLIT_AT", 3)
        split, two = counted(lambda: answer(*emails))
        # A pool of 1 has no connection to spare: the same call reads on its own one alone.
        with TestClient(create_app(make_settings(database_url, db_pool_size=1))) as small:
            small_engine = small.app.state.database.engine  # type: ignore[attr-defined]
            event.listen(small_engine, "checkout", lambda *_: checkouts.append(None))
            unspared, alone_in_pool = counted(lambda: answer(*emails, via=small))

        assert two == one + (1 if engine.dialect.name == "postgresql" else 0)
        assert alone_in_pool == one
        assert together == split == unspared == orjson.dumps({"results": alone})
        assert [(r["allowed"], r["reason"]) for r in alone] == [
            (True, "subscribed"),
            (True, "subscribed"),
            (False, "unsubscribed"),
            (False, "suppressed"),
            (False, "suppressed"),
            (False, "invalid_email"),
            (False, "invalid_email"),
            (False, "invalid_email"),
            (False, "suppressed"),
            (False, "not_subscribed"),
            (True, "subscribed"),
            (True, "subscribed"),
            (True, "subscribed"),
            (False, "not_subscribed"),
        ]


def test_calls_that_take_every_slot_and_spare_connection_all_answer(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    checker_headers: Headers,
) -> None:
    """A pool of 2: two session slots, one connection to spare. Six calls at once, each
    asking for a second connection at every chunk, all answer, and the same: a call that
    finds none reads alone, none waits on another."""
    make_topic(client, admin_headers, "news", consent="opt_in")
    record_change(client, writer_headers, "sub@example.com", "subscribed", topic="news")
    record_change(client, writer_headers, "optout@example.com", "unsubscribed")
    emails = [f"user{n}@example.com" for n in range(50)] + ["sub@example.com", "optout@example.com"]
    monkeypatch.setattr(service, "FIRST_CHUNK", 4)
    monkeypatch.setattr(service, "CALL_CHUNK", 8)
    monkeypatch.setattr(lookup, "SPLIT_AT", 1)
    with TestClient(create_app(make_settings(database_url, db_pool_size=2))) as small:

        def call() -> bytes:
            response = small.post(
                "/v1/eligibility", headers=checker_headers, json={"topic": "news", "emails": emails}
            )
            assert response.status_code == 200, response.text
            return response.content

        with ThreadPoolExecutor(max_workers=6) as calls:
            answers = set(calls.map(lambda _: call(), range(12)))

    (answer,) = answers
    results = orjson.loads(answer)["results"]
    assert [r["reason"] for r in results[-2:]] == ["subscribed", "suppressed"]
    assert {r["reason"] for r in results[:-2]} == {"not_subscribed"}


@given(st.text(max_size=40).filter(lambda text: "@" not in text))
def test_a_text_without_an_at_sign_is_no_address(text: str) -> None:
    """What `service.normalise_slowly` answers without asking email-validator."""
    with pytest.raises(InvalidAddress):
        parse_address(text)
    assert service.normalise_slowly(text) is None
