"""`/v1/notices` on both engines: notices, immutable versions, the notice period, which
version was in force when, and who may call what."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from prefcenter.apikeys.schemas import Scope
from prefcenter.audit.schemas import EventKind
from prefcenter.db import Database
from tests.notices.helpers import POLICY, notification, publish, put_notice, version_body
from tests.support.factories import Headers, assert_problem, audit_events, error_fields
from tests.support.harness import issue_key

PAST = datetime(2026, 1, 1, tzinfo=UTC)


class TestPutNotice:
    def test_creates_then_updates(self, client: TestClient, admin_headers: Headers) -> None:
        first = client.put(
            "/v1/notices/privacy",
            headers=admin_headers,
            json={"name": "Privacy policy", "kind": "privacy_policy"},
        )
        assert first.status_code == 201
        again = client.put(
            "/v1/notices/privacy",
            headers=admin_headers,
            json={"name": "Our privacy policy", "kind": "privacy_policy"},
        )
        assert again.status_code == 200
        listed = client.get("/v1/notices", headers=admin_headers).json()["notices"]
        assert [(n["key"], n["name"], n["kind"]) for n in listed] == [
            ("privacy", "Our privacy policy", "privacy_policy")
        ]

    def test_an_unknown_kind_is_refused(self, client: TestClient, admin_headers: Headers) -> None:
        answer = client.put(
            "/v1/notices/privacy", headers=admin_headers, json={"name": "P", "kind": "blog"}
        )
        assert "kind" in error_fields(assert_problem(answer, 422))


class TestPublish:
    def test_a_version_is_published_with_its_audit_event(
        self, client: TestClient, admin_headers: Headers, database: Database
    ) -> None:
        put_notice(client, admin_headers)
        version = publish(client, admin_headers, "2026-12")
        assert version["notice"] == POLICY
        assert version["material"] is True
        events = [e for e in audit_events(database) if e.kind is EventKind.NOTICE_PUBLISHED]
        assert len(events) == 1
        assert events[0].id == version["event_id"]
        assert events[0].evidence["notice"] == "privacy@2026-12"
        assert events[0].evidence["sha256"] == version["sha256"]

    def test_the_same_version_twice_is_409_and_the_first_stays(
        self, client: TestClient, admin_headers: Headers
    ) -> None:
        put_notice(client, admin_headers)
        first = publish(client, admin_headers, "v1", summary="First words.")
        answer = client.post(
            f"/v1/notices/{POLICY}/versions",
            headers=admin_headers,
            json=version_body("v1", text="Other words.\n", summary="Other."),
        )
        assert_problem(answer, 409, "notice-version-exists")
        listed = client.get(f"/v1/notices/{POLICY}/versions", headers=admin_headers).json()
        assert listed["versions"] == [first]

    def test_three_days_ahead_without_a_reason_names_the_earliest_date(
        self, client: TestClient, admin_headers: Headers, database: Database
    ) -> None:
        put_notice(client, admin_headers)
        before = datetime.now(UTC)
        answer = client.post(
            f"/v1/notices/{POLICY}/versions",
            headers=admin_headers,
            json=version_body("v1", effective_in=timedelta(days=3)),
        )
        after = datetime.now(UTC)
        problem = assert_problem(answer, 422, "notice-period-too-short")
        earliest = datetime.fromisoformat(problem["earliest_effective_at"])
        assert before + timedelta(days=30) - timedelta(seconds=1) <= earliest
        assert earliest <= after + timedelta(days=30)
        assert problem["earliest_effective_at"] in problem["detail"]
        assert client.get(f"/v1/notices/{POLICY}/versions", headers=admin_headers).json() == {
            "versions": []
        }
        assert not [e for e in audit_events(database) if e.kind is EventKind.NOTICE_PUBLISHED]

    def test_sooner_with_a_reason_is_published_and_the_reason_recorded(
        self, client: TestClient, admin_headers: Headers, database: Database
    ) -> None:
        put_notice(client, admin_headers)
        version = publish(
            client,
            admin_headers,
            "v1",
            effective_in=timedelta(days=3),
            reason="A court ordered the change.",
        )
        assert version["reason"] == "A court ordered the change."
        (event,) = [e for e in audit_events(database) if e.kind is EventKind.NOTICE_PUBLISHED]
        assert event.reason == "A court ordered the change."

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"sha256": "0" * 64}, "sha256"),
            ({"text": None}, "text"),
            ({"material": "yes"}, "material"),
            ({"version": "a@b"}, "version"),
            ({"summary": "   "}, "summary"),
        ],
    )
    def test_a_bad_version_is_refused(
        self, client: TestClient, admin_headers: Headers, fields: dict[str, object], field: str
    ) -> None:
        put_notice(client, admin_headers)
        body = version_body("v1")
        body.update(fields)
        answer = client.post(f"/v1/notices/{POLICY}/versions", headers=admin_headers, json=body)
        problem = assert_problem(answer, 422)
        # A missing text is the document's fault (neither text nor url), not one field's.
        assert field == "text" or any(field in f for f in error_fields(problem))
        assert client.get(f"/v1/notices/{POLICY}/versions", headers=admin_headers).json() == {
            "versions": []
        }

    def test_a_version_of_an_unknown_notice_is_404(
        self, client: TestClient, admin_headers: Headers
    ) -> None:
        answer = client.post(
            "/v1/notices/nope/versions", headers=admin_headers, json=version_body("v1")
        )
        assert_problem(answer, 404, "notice-not-found")


class TestInForce:
    def test_which_version_was_in_force_when(
        self, client: TestClient, admin_headers: Headers
    ) -> None:
        put_notice(client, admin_headers)
        publish(client, admin_headers, "v1", effective_at=PAST, reason="The first version.")
        v2 = publish(client, admin_headers, "v2", effective_in=timedelta(days=31))

        def at(when: datetime | None) -> tuple[int, str | None]:
            params = {"at": when.isoformat()} if when is not None else {}
            answer = client.get(
                f"/v1/notices/{POLICY}/in-force", headers=admin_headers, params=params
            )
            return answer.status_code, answer.json().get("version")

        assert at(PAST - timedelta(seconds=1)) == (404, None)
        assert at(PAST) == (200, "v1")
        assert at(None) == (200, "v1")
        effective = datetime.fromisoformat(v2["effective_at"])
        assert at(effective - timedelta(seconds=1)) == (200, "v1")
        assert at(effective) == (200, "v2")
        assert at(effective + timedelta(days=400)) == (200, "v2")

    def test_an_unknown_notice_is_404(self, client: TestClient, admin_headers: Headers) -> None:
        answer = client.get("/v1/notices/nope/in-force", headers=admin_headers)
        assert_problem(answer, 404, "notice-not-found")

    def test_a_time_without_offset_is_refused(
        self, client: TestClient, admin_headers: Headers
    ) -> None:
        put_notice(client, admin_headers)
        answer = client.get(
            f"/v1/notices/{POLICY}/in-force",
            headers=admin_headers,
            params={"at": "2026-01-01T00:00:00"},
        )
        assert_problem(answer, 422)


class TestAccess:
    ROUTES = (
        ("PUT", "/v1/notices/privacy", {"name": "P", "kind": "terms"}),
        ("GET", "/v1/notices", None),
        ("POST", "/v1/notices/privacy/versions", version_body("v9")),
        ("GET", "/v1/notices/privacy/versions", None),
        ("GET", "/v1/notices/privacy/in-force", None),
        ("GET", "/v1/notices/privacy/versions/v1/notification", None),
    )

    @pytest.mark.parametrize(
        "scope",
        [Scope.CONSENT_WRITE, Scope.CONSENT_READ, Scope.AUDIT_READ, Scope.ELIGIBILITY, Scope.LINKS],
    )
    def test_only_admin_keys_may_call(
        self,
        client: TestClient,
        admin_headers: Headers,
        database: Database,
        scope: Scope,
    ) -> None:
        put_notice(client, admin_headers)
        publish(client, admin_headers, "v1")
        other = issue_key(database, *[s for s in Scope if s is not Scope.ADMIN], name="all-but")
        single = issue_key(database, scope, name=scope.value)
        for headers in (other, single, {}):
            for method, path, body in self.ROUTES:
                answer = client.request(method, path, headers=headers, json=body)
                assert answer.status_code == (403 if headers else 401), (method, path)
        assert (
            client.get(f"/v1/notices/{POLICY}/versions", headers=admin_headers).json()["versions"][
                0
            ]["version"]
            == "v1"
        )

    def test_a_run_of_an_unknown_version_is_404(
        self, client: TestClient, admin_headers: Headers
    ) -> None:
        put_notice(client, admin_headers)
        answer = client.get(f"/v1/notices/{POLICY}/versions/v1/notification", headers=admin_headers)
        assert_problem(answer, 404, "notice-version-not-found")

    def test_a_version_that_is_not_material_mails_nobody(
        self, client: TestClient, admin_headers: Headers, writer_headers: Headers
    ) -> None:
        client.post(
            "/v1/consents",
            headers=writer_headers,
            json={"email": "ada@example.com", "status": "unsubscribed"},
        )
        put_notice(client, admin_headers)
        publish(client, admin_headers, "v1", material=False)
        assert notification(client, admin_headers, "v1") == {
            "queued": 0,
            "sent": 0,
            "failed": 0,
            "bounced": 0,
            "skipped": 0,
        }
