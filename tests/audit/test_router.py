"""`GET /v1/audit/verify`: scope `audit:read`, the contract's answer, `deep`."""

from __future__ import annotations

from fastapi.testclient import TestClient

from prefcenter.apikeys.schemas import Scope
from prefcenter.db import Database
from tests.audit.tampering import tamper
from tests.conftest import issue_key
from tests.factories import assert_problem, make_topic, record_change

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
