"""The contact pages: search, the subscriptions and timeline, the support-desk change with its
mandatory reason, the CSRF check on every form post, erasure, and escaping."""

from __future__ import annotations

import html
import re

import httpx2
import pytest
from fastapi.testclient import TestClient

from prefcenter.db import Database
from tests.admin.console import PASSWORD, create_user, page_token, sign_in, sign_in_with_key
from tests.audit.tampering import tables_holding
from tests.support.factories import (
    Headers,
    audit_events,
    lookup,
    make_topic,
    record_change,
    row_counts,
)

ADA = "ada@example.com"
SCRIPT = "<script>alert(1)</script>"


@pytest.fixture
def contact_id(client: TestClient, admin_headers: Headers) -> str:
    make_topic(client, admin_headers, "newsletter", name="Monthly newsletter")
    answer = record_change(
        client,
        admin_headers,
        ADA,
        "subscribed",
        topic="newsletter",
        source="signup_form",
        evidence={"form": "v3"},
    )
    return str(answer["contact_id"])


@pytest.fixture
def signed_in(client: TestClient, admin_headers: Headers) -> TestClient:
    sign_in_with_key(client, admin_headers)
    return client


def change_form(token: str, **fields: str) -> dict[str, str]:
    form = {
        "csrf_token": token,
        "topic": "newsletter",
        "status": "unsubscribed",
        "source": "phone",
        "reason": "Called the desk and asked to stop the newsletter",
        "evidence": "call 2026-11-25 10:14",
    }
    form.update(fields)
    return form


def search(client: TestClient, query: str) -> httpx2.Response:
    """Post the search form of the contacts page, with that page's token."""
    token = page_token(client, "/admin/contacts")
    return client.post(
        "/admin/contacts", data={"csrf_token": token, "q": query}, follow_redirects=False
    )


class TestSearch:
    @pytest.mark.parametrize("query", ["ada@example.com", " ADA@Example.com "])
    def test_by_address_leads_to_the_contact(
        self, signed_in: TestClient, contact_id: str, query: str
    ) -> None:
        answer = search(signed_in, query)

        assert answer.status_code == 303
        assert answer.headers["location"] == f"/admin/contacts/{contact_id}"

    def test_by_contact_id(self, signed_in: TestClient, contact_id: str) -> None:
        answer = search(signed_in, contact_id)

        assert answer.headers["location"] == f"/admin/contacts/{contact_id}"

    @pytest.mark.parametrize("query", ["nobody@example.com", "not an address", "x" * 40])
    def test_nothing_found_says_so(
        self, signed_in: TestClient, contact_id: str, query: str
    ) -> None:
        answer = search(signed_in, query)

        assert answer.status_code == 404
        assert "No contact has the address or id" in answer.text
        assert f'value="{query}"' in answer.text  # kept in the form to correct it

    def test_the_form_posts_the_address_never_puts_it_in_a_url(
        self, signed_in: TestClient, contact_id: str
    ) -> None:
        for page in ("/admin", "/admin/contacts"):
            text = signed_in.get(page).text

            assert '<form method="post" action="/admin/contacts"' in text
            assert 'name="csrf_token"' in text.split('action="/admin/contacts"', 1)[1]

    def test_a_query_string_searches_nothing(self, signed_in: TestClient, contact_id: str) -> None:
        answer = signed_in.get("/admin/contacts", params={"q": ADA}, follow_redirects=False)

        assert answer.status_code == 200
        assert ADA not in answer.text
        assert "No contact has" not in answer.text

    @pytest.mark.parametrize("token", [None, "", "forged-token"])
    def test_a_search_without_the_right_token_is_refused(
        self, signed_in: TestClient, contact_id: str, token: str | None
    ) -> None:
        form = {"q": ADA} if token is None else {"q": ADA, "csrf_token": token}

        answer = signed_in.post("/admin/contacts", data=form, follow_redirects=False)

        assert answer.status_code == 403
        assert ADA not in answer.text
        assert contact_id not in answer.text

    def test_an_overlong_query_is_refused_without_echoing_it(
        self, signed_in: TestClient, contact_id: str
    ) -> None:
        answer = search(signed_in, "y" * 321)

        assert answer.status_code == 422
        assert "at most 320 characters" in answer.text
        assert "y" * 321 not in answer.text

    def test_unknown_contact_page_is_a_404_page(self, signed_in: TestClient) -> None:
        answer = signed_in.get("/admin/contacts/unknownid")

        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("text/html")


class TestContactPage:
    def test_shows_address_subscriptions_and_timeline(
        self, signed_in: TestClient, contact_id: str
    ) -> None:
        page = signed_in.get(f"/admin/contacts/{contact_id}")

        assert page.status_code == 200
        assert f"Contact {ADA}" in page.text
        assert "Monthly newsletter" in page.text
        assert "signup_form" in page.text
        assert "v3" in page.text  # the evidence
        assert "none → subscribed" in page.text

    def test_script_in_a_topic_name_and_evidence_shows_as_text(
        self, signed_in: TestClient, admin_headers: Headers
    ) -> None:
        make_topic(signed_in, admin_headers, "tricky", name=SCRIPT)
        answer = record_change(
            signed_in,
            admin_headers,
            ADA,
            "subscribed",
            topic="tricky",
            evidence={"note": SCRIPT, SCRIPT: [SCRIPT]},
            reason=SCRIPT,
        )

        page = signed_in.get(f"/admin/contacts/{answer['contact_id']}")

        assert page.status_code == 200
        assert "<script" not in page.text.lower()
        assert html.escape(SCRIPT) in page.text
        trail = signed_in.get("/admin/audit")
        assert "<script" not in trail.text.lower()
        assert html.escape(SCRIPT) in trail.text


class TestSupportDeskChange:
    def test_with_a_reason_it_is_recorded_with_the_staff_member_as_actor(
        self, client: TestClient, database: Database, contact_id: str
    ) -> None:
        create_user(database, "desk")
        assert sign_in(client, username="desk", password=PASSWORD).status_code == 303
        token = page_token(client, f"/admin/contacts/{contact_id}")

        answer = client.post(
            f"/admin/contacts/{contact_id}/changes",
            data=change_form(token),
            follow_redirects=False,
        )

        assert answer.status_code == 303
        event = audit_events(database)[-1]
        assert answer.headers["location"] == (
            f"/admin/contacts/{contact_id}?recorded={event.id}#timeline"
        )
        assert (event.topic, event.from_status, event.to_status) == (
            "newsletter",
            "subscribed",
            "unsubscribed",
        )
        assert event.actor == "admin:desk"
        assert event.source == "phone"
        assert event.reason == "Called the desk and asked to stop the newsletter"
        page = client.get(answer.headers["location"])
        assert "The change is recorded" in page.text
        assert "admin:desk" in page.text
        assert "Called the desk and asked to stop the newsletter" in page.text
        assert "call 2026-11-25 10:14" in page.text
        assert "subscribed → unsubscribed" in page.text

    def test_the_reason_field_warns_against_personal_data(
        self, signed_in: TestClient, contact_id: str
    ) -> None:
        page = signed_in.get(f"/admin/contacts/{contact_id}").text

        field = re.search(r'<textarea id="reason"[^>]*aria-describedby="([^"]*)"', page)
        assert field is not None
        assert "reason-hint" in field.group(1).split()
        hint = re.search(r'<p class="hint" id="reason-hint">(.*?)</p>', page)
        assert hint is not None
        assert "Do not write personal data (names, addresses, phone numbers) in a reason" in re.sub(
            r"<[^>]+>", "", hint.group(1)
        )

    def test_without_a_reason_nothing_is_recorded(
        self, signed_in: TestClient, database: Database, contact_id: str
    ) -> None:
        token = page_token(signed_in, f"/admin/contacts/{contact_id}")
        before = row_counts(database)

        answer = signed_in.post(
            f"/admin/contacts/{contact_id}/changes", data=change_form(token, reason="   ")
        )

        assert answer.status_code == 422
        assert "Give a reason" in answer.text
        assert 'aria-invalid="true"' in answer.text
        assert row_counts(database) == before

    def test_a_subscription_needs_evidence(
        self, signed_in: TestClient, database: Database, contact_id: str
    ) -> None:
        token = page_token(signed_in, f"/admin/contacts/{contact_id}")
        before = row_counts(database)

        answer = signed_in.post(
            f"/admin/contacts/{contact_id}/changes",
            data=change_form(token, status="subscribed", evidence=""),
        )

        assert answer.status_code == 422
        assert "Say how the person asked" in answer.text
        assert row_counts(database) == before

    def test_all_marketing_opt_out(
        self, signed_in: TestClient, database: Database, admin_headers: Headers, contact_id: str
    ) -> None:
        token = page_token(signed_in, f"/admin/contacts/{contact_id}")

        answer = signed_in.post(
            f"/admin/contacts/{contact_id}/changes",
            data=change_form(token, topic="", source="email"),
        )

        assert answer.status_code == 200
        assert lookup(signed_in, admin_headers, ADA)[0]["suppressed"] is True
        assert audit_events(database)[-1].kind == "global_consent_change"

    @pytest.mark.parametrize("token", [None, "", "forged-token"])
    def test_a_post_without_the_right_token_is_refused_and_changes_nothing(
        self, signed_in: TestClient, database: Database, contact_id: str, token: str | None
    ) -> None:
        form = change_form("unused")
        if token is None:
            del form["csrf_token"]
        else:
            form["csrf_token"] = token
        before = row_counts(database)

        answer = signed_in.post(f"/admin/contacts/{contact_id}/changes", data=form)

        assert answer.status_code == 403
        assert "nothing was changed" in answer.text
        assert row_counts(database) == before

    def test_the_token_of_another_session_is_refused(
        self,
        client: TestClient,
        database: Database,
        admin_headers: Headers,
        contact_id: str,
    ) -> None:
        sign_in_with_key(client, admin_headers)
        old_token = page_token(client, f"/admin/contacts/{contact_id}")
        client.cookies.clear()
        sign_in_with_key(client, admin_headers)
        before = row_counts(database)

        answer = client.post(f"/admin/contacts/{contact_id}/changes", data=change_form(old_token))

        assert answer.status_code == 403
        assert row_counts(database) == before


class TestErase:
    def test_asks_for_confirmation_first(
        self, signed_in: TestClient, database: Database, contact_id: str
    ) -> None:
        before = row_counts(database)

        page = signed_in.get(f"/admin/contacts/{contact_id}/erase")

        assert page.status_code == 200
        assert "cannot be undone" in page.text
        assert row_counts(database) == before

    def test_erasing_removes_the_address_and_names_the_staff_member(
        self,
        signed_in: TestClient,
        database: Database,
        admin_headers: Headers,
        contact_id: str,
    ) -> None:
        token = page_token(signed_in, f"/admin/contacts/{contact_id}/erase")

        answer = signed_in.post(
            f"/admin/contacts/{contact_id}/erase", data={"csrf_token": token, "confirm": "erase"}
        )

        assert answer.status_code == 200
        assert "was erased on" in answer.text
        assert ADA not in answer.text
        (entry,) = lookup(signed_in, admin_headers, ADA)
        assert entry["contact_id"] is None
        assert entry["suppressed"] is True
        event = audit_events(database)[-1]
        assert event.kind == "erasure"
        assert event.actor.startswith("api_key:")

    def test_erasing_removes_what_staff_typed_into_a_reason(
        self, signed_in: TestClient, database: Database, contact_id: str
    ) -> None:
        phone = "+44 20 7946 0958"
        token = page_token(signed_in, f"/admin/contacts/{contact_id}")
        recorded = signed_in.post(
            f"/admin/contacts/{contact_id}/changes",
            data=change_form(token, reason=f"She called from {phone}"),
            follow_redirects=False,
        )
        assert recorded.status_code == 303
        assert tables_holding(database.settings.database_url, phone) == ["audit_free_text.reason"]
        token = page_token(signed_in, f"/admin/contacts/{contact_id}/erase")

        signed_in.post(
            f"/admin/contacts/{contact_id}/erase", data={"csrf_token": token, "confirm": "erase"}
        )

        assert tables_holding(database.settings.database_url, phone) == []

    def test_erasing_needs_the_form_token(
        self, signed_in: TestClient, database: Database, contact_id: str
    ) -> None:
        before = row_counts(database)

        answer = signed_in.post(f"/admin/contacts/{contact_id}/erase", data={"confirm": "erase"})

        assert answer.status_code == 403
        assert row_counts(database) == before
