"""`GET /v1/audit/verify`: scope `audit:read`, the contract's answer, `deep`, one at a time."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest
from fastapi.testclient import TestClient

from prefcenter.apikeys.schemas import Scope
from prefcenter.audit.router import chain_check
from prefcenter.audit.verify import VerifyResult, verify_chain
from prefcenter.db import Database
from tests.audit.tampering import tamper
from tests.support.factories import assert_problem, make_topic, record_change
from tests.support.harness import issue_key

Headers = dict[str, str]


class TestVerifyEndpoint:
    def test_answers_the_contract_shape(
        self, client: TestClient, admin_headers: Headers, database: Database
    ) -> None:
        make_topic(client, admin_headers)
        record_change(client, admin_headers, "ada@example.com", "subscribed", topic="newsletter")
        headers = issue_key(database, Scope.AUDIT_READ, name="auditor")

        response = client.get("/v1/audit/verify", headers=headers)

        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["ok"], body["checked"], body["first_bad_seq"]) == (True, 2, None)

    def test_deep_names_the_contact_whose_state_was_edited(
        self, client: TestClient, admin_headers: Headers, database: Database
    ) -> None:
        make_topic(client, admin_headers)
        answer = record_change(
            client, admin_headers, "ada@example.com", "subscribed", topic="newsletter"
        )
        tamper(database.settings.database_url, "UPDATE subscription SET status = 'unsubscribed'")

        plain = client.get("/v1/audit/verify", headers=admin_headers).json()
        deep = client.get("/v1/audit/verify?deep=true", headers=admin_headers).json()

        assert plain["ok"] is True
        assert (deep["ok"], deep["first_bad_contact"]) == (False, answer["contact_id"])

    def test_names_the_edited_seq(
        self, client: TestClient, admin_headers: Headers, database: Database
    ) -> None:
        make_topic(client, admin_headers)
        record_change(client, admin_headers, "ada@example.com", "subscribed", topic="newsletter")
        tamper(database.settings.database_url, "UPDATE audit_event SET actor = 'x' WHERE seq = 2")

        body = client.get("/v1/audit/verify", headers=admin_headers).json()

        assert (body["ok"], body["checked"], body["first_bad_seq"]) == (False, 1, 2)

    def test_needs_a_key(self, client: TestClient) -> None:
        assert_problem(client.get("/v1/audit/verify"), 401)

    def test_needs_the_audit_read_scope(self, client: TestClient, database: Database) -> None:
        headers = issue_key(database, Scope.CONSENT_READ, Scope.CONSENT_WRITE, name="crm")
        assert_problem(client.get("/v1/audit/verify", headers=headers), 403)


WAIT_S = 30.0


class HeldCheck:
    """The real `verify_chain`, held at its start until released: a verification that takes
    as long as the test wants."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> VerifyResult:
        self.started.set()
        assert self.release.wait(WAIT_S), "never released"
        return verify_chain(*args, **kwargs)


def override_check(client: TestClient, check: Callable[..., VerifyResult]) -> None:
    app: Any = client.app
    app.dependency_overrides[chain_check] = lambda: check


@pytest.fixture
def auditor(client: TestClient, admin_headers: Headers, database: Database) -> Iterator[Headers]:
    make_topic(client, admin_headers)
    record_change(client, admin_headers, "ada@example.com", "subscribed", topic="newsletter")
    yield issue_key(database, Scope.AUDIT_READ, name="auditor")
    app: Any = client.app
    app.dependency_overrides.clear()


def verify_in_background(
    client: TestClient, headers: Headers, answers: list[httpx2.Response]
) -> threading.Thread:
    thread = threading.Thread(
        target=lambda: answers.append(client.get("/v1/audit/verify?deep=true", headers=headers))
    )
    thread.start()
    return thread


class TestOneVerifyAtATime:
    def test_a_second_verify_while_one_runs_is_a_429_with_retry_after(
        self, client: TestClient, auditor: Headers, admin_headers: Headers
    ) -> None:
        held = HeldCheck()
        override_check(client, held)
        first: list[httpx2.Response] = []
        thread = verify_in_background(client, auditor, first)
        assert held.started.wait(WAIT_S)

        try:
            for headers in (auditor, admin_headers):
                for deep in ("false", "true"):
                    second = client.get(f"/v1/audit/verify?deep={deep}", headers=headers)
                    assert_problem(second, 429, "verify-in-progress")
                    assert int(second.headers["retry-after"]) > 0
        finally:
            held.release.set()
            thread.join(WAIT_S)

        assert not thread.is_alive()
        (answer,) = first
        assert answer.status_code == 200, answer.text
        assert answer.json()["ok"] is True
        # Free again once it has answered.
        again = client.get("/v1/audit/verify", headers=auditor)
        assert again.status_code == 200, again.text
        assert (again.json()["ok"], again.json()["checked"]) == (True, 2)

    def test_a_caller_without_a_key_or_scope_is_refused_as_usual_meanwhile(
        self, client: TestClient, auditor: Headers, database: Database
    ) -> None:
        held = HeldCheck()
        override_check(client, held)
        first: list[httpx2.Response] = []
        thread = verify_in_background(client, auditor, first)
        assert held.started.wait(WAIT_S)

        try:
            crm = issue_key(database, Scope.CONSENT_READ, name="crm")
            assert_problem(client.get("/v1/audit/verify"), 401)
            assert_problem(client.get("/v1/audit/verify", headers=crm), 403)
        finally:
            held.release.set()
            thread.join(WAIT_S)

        assert [a.status_code for a in first] == [200]

    def test_a_verify_that_fails_frees_the_slot(self, client: TestClient, auditor: Headers) -> None:
        def broken(*_: Any, **__: Any) -> VerifyResult:
            raise RuntimeError("the database went away mid-way")

        override_check(client, broken)
        with pytest.raises(RuntimeError, match="went away"):
            client.get("/v1/audit/verify", headers=auditor)
        app: Any = client.app
        app.dependency_overrides.clear()

        answer = client.get("/v1/audit/verify", headers=auditor)
        assert answer.status_code == 200, answer.text
