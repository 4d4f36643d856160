"""The audit trail browser (filters, pages) and the downloads, inside a console session."""

from __future__ import annotations

import html

import pytest
from fastapi.testclient import TestClient

from prefcenter.admin import trail
from prefcenter.admin.schemas import TrailFilter
from prefcenter.admin.trail import read_trail
from prefcenter.audit.keys import AuditKeys
from prefcenter.db import Database
from prefcenter.settings import Settings
from tests.admin.console import page_token, sign_in_with_key
from tests.audit.tampering import tamper
from tests.support.factories import Headers, make_topic, record_change

ADDRESSES = [f"person{n}@example.com" for n in range(5)]


@pytest.fixture
def signed_in(client: TestClient, admin_headers: Headers) -> TestClient:
    make_topic(client, admin_headers, "newsletter", name="Monthly newsletter")
    make_topic(client, admin_headers, "offers", consent="opt_out")
    for address in ADDRESSES:
        record_change(client, admin_headers, address, "subscribed", topic="newsletter")
    record_change(
        client, admin_headers, ADDRESSES[0], "unsubscribed", source="support", reason="ticket 7"
    )
    sign_in_with_key(client, admin_headers)
    return client


class TestTrailBrowser:
    def test_shows_every_event_oldest_first(self, signed_in: TestClient) -> None:
        page = signed_in.get("/admin/audit")

        assert page.status_code == 200
        assert page.text.count('<th scope="row">') == 2 + len(ADDRESSES) + 1
        assert page.text.index('<th scope="row">1</th>') < page.text.index('<th scope="row">2</th>')

    @pytest.mark.parametrize(
        ("params", "rows"),
        [
            ({"email": ADDRESSES[0]}, 2),
            ({"email": "nobody@example.com"}, 0),
            ({"topic": "newsletter"}, 1 + len(ADDRESSES)),  # its creation, then each change
            ({"source": "support"}, 1),
            ({"topic": "offers", "source": "api"}, 1),
            ({"since": "2000-01-01T00:00", "until": "2999-01-01T00:00:00Z"}, 8),
            ({"until": "2000-01-01T00:00"}, 0),
        ],
    )
    def test_filters(self, signed_in: TestClient, params: dict[str, str], rows: int) -> None:
        page = signed_in.get("/admin/audit", params=params)

        assert page.status_code == 200
        assert page.text.count('<th scope="row">') == rows
        for value in params.values():
            assert f'value="{value}"' in page.text  # the form keeps what was asked

    def test_filter_by_actor_and_contact(self, signed_in: TestClient) -> None:
        first = signed_in.get("/admin/audit", params={"email": ADDRESSES[1]}).text
        contact_id = first.split('href="/admin/contacts/', 1)[1].split('"', 1)[0]

        page = signed_in.get("/admin/audit", params={"contact_id": contact_id})

        assert page.text.count('<th scope="row">') == 1
        assert (
            signed_in.get("/admin/audit", params={"actor": "nobody"}).text.count('<th scope="row">')
            == 0
        )

    def test_a_bad_time_is_marked_in_the_form(self, signed_in: TestClient) -> None:
        page = signed_in.get("/admin/audit", params={"since": "yesterday"})

        assert page.status_code == 422
        assert 'aria-invalid="true"' in page.text

    def test_an_invalid_address_is_said_on_the_page(self, signed_in: TestClient) -> None:
        page = signed_in.get("/admin/audit", params={"email": "not an address"})

        assert page.status_code == 200
        assert "not a valid address" in page.text

    def test_pages_follow_each_other_without_gaps(
        self, signed_in: TestClient, database: Database, settings: Settings
    ) -> None:
        keys = AuditKeys.from_settings(settings)
        seen: list[int] = []
        cursor = None
        with database.transaction(write=False) as session:
            while True:
                page = read_trail(session, keys, TrailFilter(cursor=cursor), page_size=3)
                seen += [event.seq for event in page.events]
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
        assert seen == list(range(1, 2 + len(ADDRESSES) + 2))

    def test_the_next_page_link_keeps_the_filters(
        self, signed_in: TestClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(trail, "PAGE_SIZE", 4)
        first = signed_in.get("/admin/audit", params={"topic": "newsletter"})
        assert first.text.count('<th scope="row">') == 4
        before_link = first.text.split('rel="next"')[0]
        href = html.unescape(before_link.rsplit('href="', 1)[1].split('"', 1)[0])
        assert href.startswith("/admin/audit?topic=newsletter&cursor=")

        second = signed_in.get(href)

        assert second.text.count('<th scope="row">') == 2  # 6 newsletter events in all
        assert 'rel="next"' not in second.text


class TestVerify:
    def test_an_intact_trail(self, signed_in: TestClient) -> None:
        token = page_token(signed_in, "/admin/verify")

        page = signed_in.post("/admin/verify", data={"csrf_token": token, "deep": "on"})

        assert page.status_code == 200
        assert "The trail is intact" in page.text
        assert f"{2 + len(ADDRESSES) + 1} events checked" in page.text

    def test_an_edited_event_is_named(self, signed_in: TestClient, database_url: str) -> None:
        tamper(database_url, "UPDATE audit_event SET reason = 'ticket 8' WHERE seq = 8")
        token = page_token(signed_in, "/admin/verify")

        page = signed_in.post("/admin/verify", data={"csrf_token": token})

        assert "The trail has been tampered with" in page.text
        assert "seq 8" in page.text

    def test_running_it_needs_the_form_token(self, signed_in: TestClient) -> None:
        assert signed_in.post("/admin/verify", data={}).status_code == 403


class TestDownloads:
    def test_suppressions(self, signed_in: TestClient) -> None:
        answer = signed_in.get("/admin/exports/suppressions.csv")

        assert answer.status_code == 200
        assert answer.headers["content-disposition"] == 'attachment; filename="suppressions.csv"'
        lines = answer.text.splitlines()
        assert lines[0] == "email,reason,since"
        assert [line.split(",")[0] for line in lines[1:]] == [ADDRESSES[0]]

    def test_audience_of_a_topic(self, signed_in: TestClient) -> None:
        answer = signed_in.get("/admin/exports/audience/newsletter.csv")

        assert answer.status_code == 200
        emails = [line.split(",")[0] for line in answer.text.splitlines()[1:]]
        assert sorted(emails) == sorted(ADDRESSES[1:])

    def test_audience_of_an_unknown_topic_is_a_404_page(self, signed_in: TestClient) -> None:
        answer = signed_in.get("/admin/exports/audience/nothing.csv")

        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("text/html")

    @pytest.mark.parametrize("export_format", ["csv", "jsonl"])
    def test_audit_trail_with_the_filters_of_the_browser(
        self, signed_in: TestClient, export_format: str
    ) -> None:
        answer = signed_in.get(
            f"/admin/exports/audit.{export_format}", params={"source": "support"}
        )

        assert answer.status_code == 200
        lines = answer.text.splitlines()
        assert len(lines) == (2 if export_format == "csv" else 1)

    def test_the_exports_page_links_every_topic(self, signed_in: TestClient) -> None:
        page = signed_in.get("/admin/exports")

        assert "/admin/exports/audience/newsletter.csv" in page.text
        assert "/admin/exports/audience/offers.csv" in page.text
