"""A run the team sends itself: the CSV export, `notice.recipient` webhooks, and the marks
sent back through the API (each an audit event, idempotent, counted) — with the attacks on
those routes: a key without `admin`, a recipient not in the run, marking twice, an erased
recipient, formulas in the CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select

from prefcenter.app import create_app
from prefcenter.audit.schemas import EventKind
from prefcenter.db import Database, utcnow
from prefcenter.delivery.webhook_outgoing import prepare_outgoing
from prefcenter.notices.models import NoticeVersion
from prefcenter.outbox import service as outbox
from prefcenter.outbox.models import OutboxMessage
from prefcenter.outbox.schemas import OutboxKind
from prefcenter.settings import Settings
from prefcenter.tokens import TokenPurpose, verify_token
from tests.notices.helpers import notification, publish, put_notice
from tests.support.factories import (
    Headers,
    Json,
    assert_problem,
    audit_events,
    record_change,
    token_of,
)
from tests.support.harness import make_settings
from tests.webhooks.helpers import create_endpoint

DELIVERIES = "/v1/notices/privacy/versions/v2/notification/deliveries"
EXPORT = "/v1/notices/privacy/versions/v2/notification/export"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, webhooks_allow_private=True)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def people(client: TestClient, writer: Headers, *addresses: str) -> dict[str, str]:
    """Contacts (unsubscribed from all marketing: a notice still reaches them) by address."""
    return {
        a: str(record_change(client, writer, a, "unsubscribed")["contact_id"]) for a in addresses
    }


def mark(client: TestClient, headers: Headers, *marks: tuple[str, str]) -> list[Json]:
    response = client.post(
        DELIVERIES,
        headers=headers,
        json={"deliveries": [{"contact_id": c, "status": s} for c, s in marks]},
    )
    assert response.status_code == 200, response.text
    results: list[Json] = response.json()["results"]
    return results


def exported(client: TestClient, headers: Headers) -> list[dict[str, str]]:
    response = client.get(EXPORT, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.text)))


def version_id(database: Database) -> int:
    with database.transaction(write=False) as session:
        (found,) = session.exec(select(NoticeVersion.id)).all()
    assert found is not None
    return found


def delivery_events(database: Database) -> list[Any]:
    return [e for e in audit_events(database) if e.kind is EventKind.NOTICE_DELIVERY]


class TestExport:
    def test_the_run_is_a_csv_and_no_mail_is_queued(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        database: Database,
        settings: Settings,
    ) -> None:
        ids = people(client, writer_headers, "ada@example.com", "bob@example.com")
        put_notice(client, admin_headers)
        answer = publish(client, admin_headers, "v2", delivery="export", language="de")
        assert answer["delivery"] == "export"
        with database.transaction(write=False) as session:
            assert not session.exec(select(OutboxMessage)).all()
        rows = exported(client, admin_headers)
        assert [r["email"] for r in rows] == ["ada@example.com", "bob@example.com"]
        ada = rows[0]
        # A public id may start with `-`: it gets the `'` of a defused formula then.
        assert ada["contact_id"] in (ids["ada@example.com"], "'" + ids["ada@example.com"])
        assert (ada["language"], ada["notice"], ada["status"]) == ("de", "privacy@v2", "queued")
        link = ada["preferences_url"]
        assert link.startswith("http://testserver/p/")
        assert link.endswith("?lang=de")
        verified = verify_token(
            settings.signing_key_ring(),
            TokenPurpose.MANAGE,
            token_of(link.removesuffix("?lang=de")),
            now=utcnow(),
        )
        assert verified.claims.contact_id == ids["ada@example.com"]
        # The same links on every export: a team may fetch it twice.
        assert exported(client, admin_headers) == rows
        assert notification(client, admin_headers, "v2") == {
            "queued": 2,
            "sent": 0,
            "failed": 0,
            "bounced": 0,
            "skipped": 0,
        }

    def test_cells_that_a_spreadsheet_would_run_are_defused(
        self, client: TestClient, admin_headers: Headers, writer_headers: Headers
    ) -> None:
        people(client, writer_headers, "=cmd@example.com", "+1@example.com", "-2@example.com")
        put_notice(client, admin_headers)
        publish(client, admin_headers, "v2", delivery="export")
        body = client.get(EXPORT, headers=admin_headers).text
        emails = sorted(r["email"] for r in csv.DictReader(io.StringIO(body)))
        assert emails == ["'+1@example.com", "'-2@example.com", "'=cmd@example.com"]
        for line in body.splitlines()[1:]:
            assert not line.startswith(("=", "+", "-", "@"))
            assert ",=" not in line
            assert ",+" not in line
            assert ",-" not in line

    def test_an_erased_recipient_is_left_out_and_counted_skipped(
        self, client: TestClient, admin_headers: Headers, writer_headers: Headers
    ) -> None:
        ids = people(client, writer_headers, "ada@example.com", "bob@example.com")
        put_notice(client, admin_headers)
        publish(client, admin_headers, "v2", delivery="export")
        erased = client.delete(f"/v1/contacts/{ids['bob@example.com']}", headers=admin_headers)
        assert erased.status_code == 200, erased.text
        assert [r["email"] for r in exported(client, admin_headers)] == ["ada@example.com"]
        counts = notification(client, admin_headers, "v2")
        assert (counts["queued"], counts["skipped"]) == (1, 1)

    def test_a_run_the_service_mails_has_no_export(
        self, client: TestClient, admin_headers: Headers, writer_headers: Headers
    ) -> None:
        people(client, writer_headers, "ada@example.com")
        put_notice(client, admin_headers)
        publish(client, admin_headers, "v2")
        assert_problem(client.get(EXPORT, headers=admin_headers), 409, "notice-run-not-external")
        publish(client, admin_headers, "v3", material=False, delivery="export")
        assert_problem(
            client.get(EXPORT.replace("v2", "v3"), headers=admin_headers),
            409,
            "notice-run-not-external",
        )

    def test_only_an_admin_key_may_export_or_mark(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        reader_headers: Headers,
    ) -> None:
        ids = people(client, writer_headers, "ada@example.com")
        put_notice(client, admin_headers)
        publish(client, admin_headers, "v2", delivery="export")
        for headers in (writer_headers, reader_headers):
            assert_problem(client.get(EXPORT, headers=headers), 403)
            body = {"deliveries": [{"contact_id": ids["ada@example.com"], "status": "sent"}]}
            assert_problem(client.post(DELIVERIES, headers=headers, json=body), 403)
        assert_problem(client.get(EXPORT), 401)
        assert notification(client, admin_headers, "v2")["sent"] == 0


class TestMarks:
    def test_marks_are_counted_and_each_change_is_an_audit_event(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        database: Database,
    ) -> None:
        ids = people(client, writer_headers, "ada@example.com", "bob@example.com", "cy@example.com")
        ada, bob, cy = ids.values()
        put_notice(client, admin_headers)
        publish(client, admin_headers, "v2", delivery="export")
        results = mark(client, admin_headers, (ada, "sent"), (bob, "failed"), (cy, "sent"))
        assert [r["changed"] for r in results] == [True, True, True]
        results = mark(client, admin_headers, (cy, "bounced"), (bob, "sent"))
        assert [(r["status"], r["changed"]) for r in results] == [
            ("bounced", True),
            ("sent", True),
        ]
        assert notification(client, admin_headers, "v2") == {
            "queued": 0,
            "sent": 3,
            "failed": 0,
            "bounced": 1,
            "skipped": 0,
        }
        events = delivery_events(database)
        assert len(events) == 5
        assert {e.evidence["notice"] for e in events} == {"privacy@v2"}
        cys = [(e.from_status, e.to_status) for e in events if e.contact_id == cy]
        assert cys == [("queued", "sent"), ("sent", "bounced")]
        assert all(e.actor for e in events)
        assert client.get("/v1/audit/verify", headers=admin_headers).json()["ok"] is True
        rows = {r["email"]: r["status"] for r in exported(client, admin_headers)}
        assert rows == {
            "ada@example.com": "sent",
            "bob@example.com": "sent",
            "cy@example.com": "bounced",
        }

    def test_marking_twice_records_nothing_more(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        database: Database,
    ) -> None:
        (ada,) = people(client, writer_headers, "ada@example.com").values()
        put_notice(client, admin_headers)
        publish(client, admin_headers, "v2", delivery="export")
        first, again = mark(client, admin_headers, (ada, "sent"), (ada, "sent"))
        assert (first["changed"], again["changed"], again["event_id"]) == (True, False, None)
        (later,) = mark(client, admin_headers, (ada, "sent"))
        assert later["changed"] is False
        assert len(delivery_events(database)) == 1
        assert notification(client, admin_headers, "v2")["sent"] == 1

    def test_refused_marks_get_their_problem_and_the_others_apply(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        database: Database,
    ) -> None:
        ids = people(client, writer_headers, "ada@example.com", "bob@example.com")
        ada, bob = ids.values()
        put_notice(client, admin_headers)
        publish(client, admin_headers, "v2", delivery="export")
        # Joined after the run was queued: not one of its recipients.
        (late,) = people(client, writer_headers, "late@example.com").values()
        mark(client, admin_headers, (bob, "bounced"))
        results = mark(
            client,
            admin_headers,
            ("nobody-at-all", "sent"),
            (late, "sent"),
            (bob, "sent"),
            (ada, "sent"),
        )
        slugs = [r.get("problem", {}).get("type", "").rsplit(":", 1)[-1] for r in results]
        assert slugs == [
            "notice-recipient-not-found",
            "notice-recipient-not-found",
            "notice-delivery-bounced",
            "",
        ]
        assert results[0]["problem"]["status"] == 404
        assert results[0]["problem"]["errors"][0]["field"] == "deliveries[0].contact_id"
        assert results[3] == {
            "contact_id": ada,
            "status": "sent",
            "changed": True,
            "event_id": results[3]["event_id"],
        }
        assert len(delivery_events(database)) == 2  # bob's bounce, ada's sent

    def test_an_erased_recipient_cannot_be_marked(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        database: Database,
    ) -> None:
        (ada,) = people(client, writer_headers, "ada@example.com").values()
        put_notice(client, admin_headers)
        publish(client, admin_headers, "v2", delivery="export")
        assert client.delete(f"/v1/contacts/{ada}", headers=admin_headers).status_code == 200
        (result,) = mark(client, admin_headers, (ada, "sent"))
        assert result["problem"]["type"].endswith(":notice-recipient-erased")
        assert result["problem"]["status"] == 409
        assert delivery_events(database) == []
        assert notification(client, admin_headers, "v2")["skipped"] == 1

    def test_a_run_the_service_mails_takes_no_marks(
        self, client: TestClient, admin_headers: Headers, writer_headers: Headers
    ) -> None:
        (ada,) = people(client, writer_headers, "ada@example.com").values()
        put_notice(client, admin_headers)
        publish(client, admin_headers, "v2")
        body = {"deliveries": [{"contact_id": ada, "status": "sent"}]}
        response = client.post(DELIVERIES, headers=admin_headers, json=body)
        assert_problem(response, 409, "notice-run-not-external")
        assert notification(client, admin_headers, "v2")["sent"] == 0

    @pytest.mark.parametrize(
        "body",
        [
            {"deliveries": []},
            {"deliveries": [{"contact_id": "x", "status": "queued"}]},
            {"deliveries": [{"contact_id": "x", "status": "sent", "extra": 1}]},
            {"deliveries": [{"contact_id": "a/../b", "status": "sent"}]},
            {"deliveries": [{"contact_id": "x", "status": "sent"}] * 1001},
        ],
    )
    def test_malformed_batches_are_refused(
        self, client: TestClient, admin_headers: Headers, body: Json
    ) -> None:
        put_notice(client, admin_headers)
        publish(client, admin_headers, "v2", delivery="export")
        assert_problem(client.post(DELIVERIES, headers=admin_headers, json=body), 422)

    def test_unknown_version_is_404(self, client: TestClient, admin_headers: Headers) -> None:
        put_notice(client, admin_headers)
        body = {"deliveries": [{"contact_id": "x", "status": "sent"}]}
        response = client.post(DELIVERIES, headers=admin_headers, json=body)
        assert_problem(response, 404, "notice-version-not-found")


class TestWebhooks:
    def test_each_recipient_is_one_delivery_written_when_sent(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        database: Database,
        settings: Settings,
    ) -> None:
        endpoint = create_endpoint(
            client, admin_headers, "http://127.0.0.1:9/hooks", ["notice.recipient"]
        )
        create_endpoint(client, admin_headers, "http://127.0.0.1:9/all", ["*"])
        ids = people(client, writer_headers, "ada@example.com", "bob@example.com")
        put_notice(client, admin_headers)
        publish(client, admin_headers, "v2", delivery="webhooks")
        assert client.delete(f"/v1/contacts/{ids['bob@example.com']}", headers=admin_headers)
        now = utcnow()
        with database.transaction(write=True) as session:
            rows = session.exec(
                select(OutboxMessage).where(col(OutboxMessage.kind) == "webhook")
            ).all()
            recipient_rows = [r for r in rows if r.payload["type"] == "notice.recipient"]
            assert len(recipient_rows) == 2  # to the endpoint that names the type only
            assert len({r.endpoint_id for r in recipient_rows}) == 1
            claimed = outbox.claim_due(
                session,
                kinds=(OutboxKind.WEBHOOK,),
                now=now,
                limit=100,
                claim="t",
                lease=timedelta(seconds=settings.outbox_lease_seconds),
            )
        outgoing = prepare_outgoing(database, settings, claimed, now)
        by_contact = {o.claimed.payload.get("contact_id"): o for o in outgoing}
        ada = by_contact[ids["ada@example.com"]]
        assert ada.url == endpoint["url"]
        assert ada.webhook_id == f"msg_notice.{version_id(database)}.{ids['ada@example.com']}"
        body = orjson.loads(ada.body)
        assert body["type"] == "notice.recipient"
        data = body["data"]
        assert (data["email"], data["notice"]) == ("ada@example.com", "privacy@v2")
        assert data["preferences_url"].startswith("http://testserver/p/")
        # Erased since: nothing of them is sent.
        bob = by_contact[ids["bob@example.com"]]
        assert bob.skip == "the recipient was erased"
        assert bob.body == b""

    def test_without_an_endpoint_the_run_is_refused(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        database: Database,
    ) -> None:
        people(client, writer_headers, "ada@example.com")
        create_endpoint(client, admin_headers, "http://127.0.0.1:9/hooks", ["consent.changed"])
        # `*` does not take deliveries that carry addresses.
        create_endpoint(client, admin_headers, "http://127.0.0.1:9/all", ["*"])
        put_notice(client, admin_headers)
        publish(client, admin_headers, "v2", delivery="webhooks", expect=422)
        response = client.get("/v1/notices/privacy/versions", headers=admin_headers)
        assert response.json()["versions"] == []
