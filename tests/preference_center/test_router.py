"""The recipient's side over HTTP: `/u/{token}` (page and RFC 8058 one-click), `/p/{token}`
(the preference center), `/c/{token}` (double opt-in confirmation).

Every recipient request goes through `visit`, which checks the headers every recipient
response must carry and that nothing ever redirects.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, urlsplit

import httpx2
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlmodel import select

from prefcenter.apikeys.schemas import Scope
from prefcenter.app import create_app
from prefcenter.audit.schemas import AuditEventOut
from prefcenter.contacts.models import Contact
from prefcenter.db import Database
from prefcenter.settings import Settings, parse_signing_keys
from prefcenter.tokens import MAX_TOKEN_LENGTH, TokenClaims, TokenPurpose, sign_token
from tests.support.factories import (
    Headers,
    Json,
    audit_events,
    issue_links,
    lookup,
    make_topic,
    record_change,
    row_counts,
    subscription_row,
    subscription_status,
    token_of,
)
from tests.support.harness import TEST_SIGNING_KEYS, issue_key, make_settings

ADA = "ada@example.com"
ONE_CLICK = b"List-Unsubscribe=One-Click"
RING = parse_signing_keys(TEST_SIGNING_KEYS)
MAIL_BASE_URL = "https://mail.example.org"
# What Gmail's one-click POST looks like to us, give or take the exact agent string.
MAIL_CLIENT_AGENT = "Mozilla/5.0 (compatible; GoogleOneClickUnsubscribe)"
MULTIPART_BOUNDARY = "----=_OneClick_0123456789"
TOKEN_PREFIXES = ("u", "p", "c")
PAGE_STATUSES = {200, 400, 404}


# --- recipient requests and what every answer to one must look like ----------------------


def assert_recipient_headers(response: httpx2.Response) -> None:
    """No cookie, nothing cached or leaked onward, nothing framed, no script, no redirect."""
    assert not 300 <= response.status_code < 400, response.headers.get("location")
    assert "location" not in response.headers
    assert "set-cookie" not in response.headers
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"
    directives = {
        name: values
        for name, *values in (
            d.split() for d in response.headers["content-security-policy"].split(";") if d.strip()
        )
    }
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["default-src"] == ["'none'"]
    assert not {"script-src", "script-src-elem", "script-src-attr"} & set(directives)
    if response.content:
        assert response.headers["content-type"].startswith("text/html")
        assert "<script" not in response.text.lower()
        assert "javascript:" not in response.text.lower()


def visit(
    client: TestClient,
    method: str,
    url: str,
    *,
    headers: Headers | None = None,
    content: bytes | None = None,
    data: dict[str, Any] | None = None,
) -> httpx2.Response:
    """A request as a person's browser or mail client makes it: no auth, no cookies."""
    assert not client.cookies
    response = client.request(
        method, url, headers=headers, content=content, data=data, follow_redirects=False
    )
    assert "authorization" not in response.request.headers
    assert "cookie" not in response.request.headers
    assert_recipient_headers(response)
    return response


def one_click(
    client: TestClient, url: str, *, encoding: str = "urlencoded", extra: bytes = b""
) -> httpx2.Response:
    """The RFC 8058 POST exactly as mail clients send it: no cookies, no Origin, no Referer."""
    headers = {"User-Agent": MAIL_CLIENT_AGENT}
    if encoding == "urlencoded":
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        body = ONE_CLICK + extra
    else:
        headers["Content-Type"] = f"multipart/form-data; boundary={MULTIPART_BOUNDARY}"
        body = (
            f"--{MULTIPART_BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="List-Unsubscribe"\r\n'
            "\r\n"
            "One-Click\r\n"
            f"--{MULTIPART_BOUNDARY}--\r\n"
        ).encode()
    response = visit(client, "POST", url, headers=headers, content=body)
    for header in ("origin", "referer", "cookie"):
        assert header not in response.request.headers
    return response


# What a POST to each kind of link would change if the token were accepted.
ACTING_BODY = {"u": ONE_CLICK, "p": b"action=unsubscribe_all", "c": b""}


def act(client: TestClient, path: str) -> httpx2.Response:
    """POST the form that would change something on this kind of link."""
    kind = path.removeprefix("/")[:1]
    return visit(
        client,
        "POST",
        path,
        content=ACTING_BODY[kind],
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


# --- reading pages ---------------------------------------------------------------------


@dataclass
class Page:
    lang: str | None = None
    forms: list[dict[str, str]] = field(default_factory=list)
    # name → values of the inputs a browser would submit with the form (hidden, checked boxes)
    fields: dict[str, list[str]] = field(default_factory=dict)
    # topic key → checked, for the preference center's boxes
    boxes: dict[str, bool] = field(default_factory=dict)
    urls: list[str] = field(default_factory=list)
    text: str = ""


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.page = Page()
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        for name in ("href", "src", "action", "formaction", "data", "poster"):
            if name in attributes:
                self.page.urls.append(attributes[name])
        if tag == "html":
            self.page.lang = attributes.get("lang")
        elif tag == "form":
            self.page.forms.append(attributes)
        elif tag == "meta" and attributes.get("http-equiv", "").lower() == "refresh":
            self.page.urls.append(attributes.get("content", ""))
        elif tag == "input":
            kind = attributes.get("type", "text")
            name = attributes.get("name", "")
            if kind == "checkbox" and name == "topic":
                self.page.boxes[attributes["value"]] = "checked" in attributes
            if kind == "hidden" or (kind == "checkbox" and "checked" in attributes):
                self.page.fields.setdefault(name, []).append(attributes.get("value", ""))

    def handle_data(self, data: str) -> None:
        self._text.append(data)

    def close(self) -> None:
        super().close()
        self.page.text = " ".join(" ".join(self._text).split())


def parse_page(response: httpx2.Response) -> Page:
    parser = _PageParser()
    parser.feed(response.text)
    parser.close()
    return parser.page


def path_of(url: str) -> str:
    return urlsplit(url).path


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture
def links_headers(database: Database) -> Headers:
    return issue_key(database, Scope.LINKS, name="mailer")


@pytest.fixture
def newsletter(client: TestClient, admin_headers: Headers) -> str:
    return str(make_topic(client, admin_headers, "newsletter", name="Newsletter")["key"])


@pytest.fixture
def offers(client: TestClient, admin_headers: Headers) -> str:
    return str(make_topic(client, admin_headers, "offers", name="Offers", consent="opt_out")["key"])


@pytest.fixture
def digest(client: TestClient, admin_headers: Headers) -> str:
    """A marketing topic with double opt-in."""
    return str(
        make_topic(client, admin_headers, "digest", name="Weekly digest", double_opt_in=True)["key"]
    )


@pytest.fixture
def receipts(client: TestClient, admin_headers: Headers) -> str:
    return str(
        make_topic(client, admin_headers, "receipts", name="Receipts", kind="transactional")["key"]
    )


@pytest.fixture
def subscribed_ada(client: TestClient, writer_headers: Headers, newsletter: str) -> Json:
    return record_change(client, writer_headers, ADA, "subscribed", topic=newsletter)


@pytest.fixture
def mail_settings(database_url: str) -> Settings:
    """A public HTTPS origin and a mailto: part, as in production."""
    return make_settings(
        database_url, base_url=MAIL_BASE_URL, unsubscribe_mailto="unsubscribe@example.org"
    )


@pytest.fixture
def mail_client(mail_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(mail_settings), base_url=MAIL_BASE_URL) as client:
        yield client


@dataclass(frozen=True, slots=True)
class Tokens:
    """One valid token of each kind for ADA, subscribed to the newsletter and pending on the
    digest."""

    unsubscribe: str  # the `/u` link of ADA's newsletter (unsubscribe purpose)
    unsubscribe_all: str
    manage: str  # the `/p` link (manage purpose)
    manage_all: str
    confirm: str

    def for_page(self, prefix: str) -> str:
        """The token each page takes: `u`, `p` or `c`."""
        return {"u": self.unsubscribe, "p": self.manage, "c": self.confirm}[prefix]


@pytest.fixture
def tokens(
    client: TestClient,
    links_headers: Headers,
    writer_headers: Headers,
    subscribed_ada: Json,
    digest: str,
) -> Tokens:
    pending = record_change(client, writer_headers, ADA, "subscribed", topic=digest)
    assert pending["status"] == "pending"
    newsletter_links = issue_links(client, links_headers, ADA, topic=subscribed_ada["topic"])
    all_links = issue_links(client, links_headers, ADA)
    return Tokens(
        unsubscribe=token_of(newsletter_links["unsubscribe_url"]),
        unsubscribe_all=token_of(all_links["unsubscribe_url"]),
        manage=token_of(newsletter_links["preferences_url"]),
        manage_all=token_of(all_links["preferences_url"]),
        confirm=token_of(pending["confirm_url"]),
    )


PURPOSE_OF_PAGE = {
    "u": TokenPurpose.UNSUBSCRIBE,
    "p": TokenPurpose.MANAGE,
    "c": TokenPurpose.CONFIRM,
}


def signed(purpose: TokenPurpose, **claims: Any) -> str:
    """A token signed with the test key ring, for claims the service would never issue."""
    claims.setdefault("topic", None)
    claims.setdefault("campaign_id", None)
    claims.setdefault("issued_at", datetime.now(UTC))
    return sign_token(RING, purpose, TokenClaims(**claims))


def invalid_link_page(client: TestClient) -> httpx2.Response:
    """The page a plainly malformed token gets: what every refused manage link must look like."""
    response = visit(client, "GET", "/u/not-a-token")
    assert response.status_code == 400
    return response


def last_event(database: Database) -> AuditEventOut:
    return audit_events(database)[-1]


# --- the Gmail path: issue, read List-Unsubscribe, POST One-Click ------------------------


class TestOneClickUnsubscribe:
    @pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
    def test_mail_client_post_to_the_list_unsubscribe_url_opts_out_at_once(
        self,
        mail_client: TestClient,
        links_headers: Headers,
        reader_headers: Headers,
        database: Database,
        subscribed_ada: Json,
        newsletter: str,
        encoding: str,
    ) -> None:
        send = mail_client.post(
            "/v1/links/batch",
            headers=links_headers,
            json={
                "items": [
                    {"email": "bob@example.com", "topic": newsletter, "campaign_id": "spring"},
                    {"email": ADA, "topic": newsletter, "campaign_id": "spring"},
                ]
            },
        )
        assert send.status_code == 200, send.text
        header = send.json()["items"][1]["headers"]["List-Unsubscribe"]
        targets = re.findall(r"<([^>]+)>", header)
        https = [t for t in targets if t.startswith("https:")]
        assert len(https) == 1
        assert any(t.startswith("mailto:unsubscribe@example.org?") for t in targets)
        assert send.json()["items"][1]["headers"]["List-Unsubscribe-Post"] == ONE_CLICK.decode()

        response = one_click(mail_client, https[0], encoding=encoding)

        assert response.status_code == 200
        (ada,) = lookup(mail_client, reader_headers, ADA)
        assert subscription_status(ada, newsletter) == "unsubscribed"
        assert ada["suppressed"] is False
        event = last_event(database)
        assert event.contact_id == subscribed_ada["contact_id"]
        assert (event.topic, event.from_status, event.to_status) == (
            newsletter,
            "subscribed",
            "unsubscribed",
        )
        assert event.outcome == "applied"
        assert event.source == "one_click"
        assert event.actor == "recipient"
        assert event.campaign_id == "spring"
        assert event.evidence["channel"] == "one_click"
        assert event.evidence["token_kid"] == RING[0].kid
        assert event.evidence["client_ip"] == "testclient"
        assert event.evidence["user_agent"] == MAIL_CLIENT_AGENT
        (bob,) = lookup(mail_client, reader_headers, "bob@example.com")
        assert bob["subscriptions"] == []

    def test_answer_is_a_confirmation_page(
        self, client: TestClient, links_headers: Headers, subscribed_ada: Json, newsletter: str
    ) -> None:
        links = issue_links(client, links_headers, ADA, topic=newsletter)

        response = one_click(client, links["unsubscribe_url"])

        page = parse_page(response)
        assert "You are unsubscribed" in page.text
        assert "Newsletter" in page.text
        assert "a•••@example.com" in page.text
        assert ADA not in response.text
        # No way from the unsubscribe link to the preference center: that token only ever
        # unsubscribes, and whoever saw the List-Unsubscribe header must not get further.
        assert not [url for url in page.urls if "/p/" in url or "/u/" in url]
        assert "use the preferences link at the foot of any of our emails" in page.text

    def test_token_without_topic_opts_out_of_all_marketing(
        self,
        client: TestClient,
        links_headers: Headers,
        reader_headers: Headers,
        database: Database,
        subscribed_ada: Json,
        newsletter: str,
    ) -> None:
        links = issue_links(client, links_headers, ADA, campaign_id="all-out")

        response = one_click(client, links["unsubscribe_url"], encoding="multipart")

        assert response.status_code == 200
        (ada,) = lookup(client, reader_headers, ADA)
        assert ada["suppressed"] is True
        event = last_event(database)
        assert event.kind == "global_consent_change"
        assert event.topic is None
        assert (event.source, event.actor, event.campaign_id) == (
            "one_click",
            "recipient",
            "all-out",
        )

    def test_replaying_the_same_post_changes_nothing_more(
        self,
        client: TestClient,
        links_headers: Headers,
        reader_headers: Headers,
        database: Database,
        subscribed_ada: Json,
        newsletter: str,
    ) -> None:
        url = issue_links(client, links_headers, ADA, topic=newsletter)["unsubscribe_url"]
        first = one_click(client, url)
        state = lookup(client, reader_headers, ADA)
        row = subscription_row(database, ADA, newsletter)
        seen = len(audit_events(database))

        replays = [one_click(client, url), one_click(client, url, encoding="multipart")]

        assert [r.status_code for r in replays] == [200, 200]
        assert replays[0].text == first.text
        assert lookup(client, reader_headers, ADA) == state
        again = subscription_row(database, ADA, newsletter)
        assert row is not None
        assert again is not None
        assert (again.status, again.since, again.event_id) == (row.status, row.since, row.event_id)
        assert all(e.outcome == "unchanged" for e in audit_events(database)[seen:])

    def test_topic_in_the_token_wins_over_a_form_field(
        self,
        client: TestClient,
        links_headers: Headers,
        writer_headers: Headers,
        reader_headers: Headers,
        subscribed_ada: Json,
        newsletter: str,
        offers: str,
    ) -> None:
        record_change(client, writer_headers, ADA, "subscribed", topic=offers)
        url = issue_links(client, links_headers, ADA, topic=newsletter)["unsubscribe_url"]

        one_click(client, url, extra=f"&topic={offers}".encode())
        visit(
            client, "POST", url, data={"via": "page", "topic": offers, "action": "unsubscribe_all"}
        )

        (ada,) = lookup(client, reader_headers, ADA)
        assert subscription_status(ada, newsletter) == "unsubscribed"
        assert subscription_status(ada, offers) == "subscribed"
        assert ada["suppressed"] is False

    def test_the_pages_own_button_is_recorded_as_the_page(
        self,
        client: TestClient,
        links_headers: Headers,
        database: Database,
        subscribed_ada: Json,
        newsletter: str,
    ) -> None:
        url = issue_links(client, links_headers, ADA, topic=newsletter)["unsubscribe_url"]
        page = parse_page(visit(client, "GET", url))
        (form,) = page.forms
        assert form["method"] == "post"

        response = visit(client, "POST", form["action"], data=page.fields)

        assert response.status_code == 200
        event = last_event(database)
        assert (event.source, event.evidence["channel"], event.to_status) == (
            "unsubscribe_page",
            "unsubscribe_page",
            "unsubscribed",
        )

    def test_api_client_cannot_resubscribe_after_it(
        self,
        client: TestClient,
        links_headers: Headers,
        writer_headers: Headers,
        reader_headers: Headers,
        subscribed_ada: Json,
        newsletter: str,
    ) -> None:
        one_click(
            client, issue_links(client, links_headers, ADA, topic=newsletter)["unsubscribe_url"]
        )

        record_change(client, writer_headers, ADA, "subscribed", topic=newsletter, expect=409)

        (ada,) = lookup(client, reader_headers, ADA)
        assert subscription_status(ada, newsletter) == "unsubscribed"

    def test_forwarded_for_is_believed_only_from_a_trusted_proxy(
        self,
        database_url: str,
        database: Database,
        links_headers: Headers,
        writer_headers: Headers,
        newsletter: str,
    ) -> None:
        forwarded = {
            "X-Forwarded-For": "198.51.100.23",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        seen: list[str] = []
        for trusted in ("", "10.0.0.0/8"):
            app = create_app(make_settings(database_url, trusted_proxies=trusted))
            email = f"proxy-{len(seen)}@example.com"
            with TestClient(app, client=("10.1.2.3", 40000)) as client:
                record_change(client, writer_headers, email, "subscribed", topic=newsletter)
                url = issue_links(client, links_headers, email, topic=newsletter)["unsubscribe_url"]
                visit(client, "POST", url, headers=forwarded, content=ONE_CLICK)
            seen.append(last_event(database).evidence["client_ip"])

        assert seen == ["10.1.2.3", "198.51.100.23"]


# --- scanners: reading never changes anything ----------------------------------------------


class TestReadingChangesNothing:
    def test_get_head_and_options_on_every_token_url_change_nothing(
        self,
        client: TestClient,
        reader_headers: Headers,
        database: Database,
        tokens: Tokens,
        newsletter: str,
        digest: str,
    ) -> None:
        urls = [
            f"/u/{tokens.unsubscribe}",
            f"/u/{tokens.unsubscribe_all}",
            f"/p/{tokens.manage}",
            f"/p/{tokens.manage_all}",
            f"/c/{tokens.confirm}",
        ]
        # What scanners add: a query that looks like the one-click body, a browser agent.
        scanner = {"User-Agent": "Mozilla/5.0 (Safe Links scanner) Chrome/120", "Accept": "*/*"}
        before = row_counts(database)
        state = lookup(client, reader_headers, ADA)

        for url in urls:
            for target in (
                url,
                f"{url}?List-Unsubscribe=One-Click",
                f"{url}?action=unsubscribe_all",
            ):
                get = visit(client, "GET", target, headers=scanner)
                head = visit(client, "HEAD", target, headers=scanner)
                options = visit(
                    client,
                    "OPTIONS",
                    target,
                    headers={
                        "Origin": "https://evil.example",
                        "Access-Control-Request-Method": "POST",
                    },
                )
                assert (get.status_code, head.status_code, options.status_code) == (200, 200, 204)
                assert head.content == b""
                assert "access-control-allow-origin" not in options.headers
                assert set(options.headers["allow"].replace(" ", "").split(",")) == {
                    "GET",
                    "HEAD",
                    "POST",
                }

        assert row_counts(database) == before
        assert lookup(client, reader_headers, ADA) == state
        (ada,) = state
        assert subscription_status(ada, newsletter) == "subscribed"
        assert subscription_status(ada, digest) == "pending"

    def test_unsubscribe_page_offers_one_button_and_no_script(
        self, client: TestClient, tokens: Tokens
    ) -> None:
        response = visit(client, "GET", f"/u/{tokens.unsubscribe}")

        page = parse_page(response)
        (form,) = page.forms
        assert form == {"method": "post", "action": f"/u/{tokens.unsubscribe}"}
        assert response.text.count("<button") == 1
        assert "Stop emails about Newsletter to a•••@example.com?" in page.text
        assert ADA not in response.text

    def test_unsubscribe_page_for_all_marketing_says_so(
        self, client: TestClient, tokens: Tokens
    ) -> None:
        page = parse_page(visit(client, "GET", f"/u/{tokens.unsubscribe_all}"))

        assert "Stop all marketing emails to a•••@example.com?" in page.text


# --- bad tokens: a safe page, no change ------------------------------------------------------


def flip_one_bit_at_each_position(token: str) -> Iterator[str]:
    """Every position of the token, each with one bit flipped (a different bit per position,
    so every bit of a character is exercised somewhere)."""
    for index, char in enumerate(token):
        flipped = chr(ord(char) ^ (1 << (index % 7)))
        yield token[:index] + flipped + token[index + 1 :]


class TestBadTokens:
    def test_every_bit_flip_is_refused_with_no_change(
        self, client: TestClient, database: Database, tokens: Tokens
    ) -> None:
        expected = invalid_link_page(client).text
        before = row_counts(database)
        statuses: set[int] = set()

        for prefix, token in (
            ("u", tokens.unsubscribe),
            ("p", tokens.manage_all),
            ("c", tokens.confirm),
        ):
            for bad in flip_one_bit_at_each_position(token):
                response = act(client, f"/{prefix}/{quote(bad, safe='')}")
                statuses.add(response.status_code)
                if prefix != "c":
                    assert response.text == expected, bad

        assert statuses == {400}
        assert row_counts(database) == before

    def test_a_token_of_one_purpose_does_not_work_as_another(
        self, client: TestClient, database: Database, reader_headers: Headers, tokens: Tokens
    ) -> None:
        before = row_counts(database)
        state = lookup(client, reader_headers, ADA)

        for url in (
            f"/c/{tokens.manage}",
            f"/c/{tokens.manage_all}",
            f"/c/{tokens.unsubscribe}",
            f"/u/{tokens.confirm}",
            f"/p/{tokens.confirm}",
            # The List-Unsubscribe token only unsubscribes: it opens no preference center
            # (from which it could subscribe), and a preference token does not one-click.
            f"/p/{tokens.unsubscribe}",
            f"/p/{tokens.unsubscribe_all}",
            f"/u/{tokens.manage}",
            f"/u/{tokens.manage_all}",
        ):
            assert visit(client, "GET", url).status_code == 400
            assert visit(client, "HEAD", url).status_code == 400
            assert act(client, url).status_code == 400

        assert row_counts(database) == before
        assert lookup(client, reader_headers, ADA) == state

    def test_an_over_long_but_validly_signed_token_is_refused(
        self, client: TestClient, database: Database, subscribed_ada: Json, newsletter: str
    ) -> None:
        before = row_counts(database)

        for prefix in TOKEN_PREFIXES:
            purpose = PURPOSE_OF_PAGE[prefix]
            token = signed(
                purpose,
                contact_id=subscribed_ada["contact_id"],
                topic=newsletter,
                campaign_id="x" * 1000,
            )
            assert len(token) > MAX_TOKEN_LENGTH
            assert visit(client, "GET", f"/{prefix}/{token}").status_code == 400
            assert act(client, f"/{prefix}/{token}").status_code == 400

        assert row_counts(database) == before

    def test_odd_paths_get_the_page_not_a_crash(
        self, client: TestClient, database: Database, tokens: Tokens
    ) -> None:
        before = row_counts(database)

        for prefix in TOKEN_PREFIXES:
            token = tokens.for_page(prefix)
            for suffix in (
                "",
                "a/b",
                f"{token}/",
                f"{token}/extra",
                f"/{token}",
                f"{token}%2F",
                f"{token}%0A",
                "..%2F..%2Fv1%2Ftopics",
            ):
                for response in (
                    visit(client, "GET", f"/{prefix}/{suffix}"),
                    act(client, f"/{prefix}/{suffix}"),
                ):
                    assert response.status_code == 400, suffix
                    assert "This link does not work" in parse_page(response).text

        assert row_counts(database) == before

    def test_signed_claims_that_cannot_be_stored_are_refused(
        self, client: TestClient, database: Database, subscribed_ada: Json, newsletter: str
    ) -> None:
        """Only a holder of the key could sign these; they still get the page, not a 500
        (PostgreSQL refuses NUL in text)."""
        contact_id = subscribed_ada["contact_id"]
        before = row_counts(database)

        for claims in (
            {"contact_id": "\x00"},
            {"contact_id": contact_id, "topic": "news\x00letter"},
            {"contact_id": contact_id, "topic": newsletter, "campaign_id": "spring\x00"},
            {"contact_id": contact_id + "\n"},
        ):
            for prefix in TOKEN_PREFIXES:
                purpose = PURPOSE_OF_PAGE[prefix]
                path = f"/{prefix}/{signed(purpose, **claims)}"
                assert visit(client, "GET", path).status_code == 400, claims
                assert act(client, path).status_code == 400, claims

        assert row_counts(database) == before

    def test_unknown_contact_reveals_nothing_more_than_a_bad_token(
        self, client: TestClient, database: Database, subscribed_ada: Json
    ) -> None:
        expected = invalid_link_page(client).text
        before = row_counts(database)

        for prefix in ("u", "p"):
            url = f"/{prefix}/{signed(PURPOSE_OF_PAGE[prefix], contact_id='Zz9_made-up-cont')}"
            for response in (visit(client, "GET", url), act(client, url)):
                assert response.status_code == 404
                assert response.text == expected

        assert row_counts(database) == before

    def test_unknown_contact_on_a_confirmation_link_is_404(
        self, client: TestClient, database: Database, digest: str
    ) -> None:
        made_up = signed(
            TokenPurpose.CONFIRM, contact_id="Zz9_made-up-cont", topic=digest, pending_event="e"
        )
        before = row_counts(database)

        for method in ("GET", "POST"):
            assert visit(client, method, f"/c/{made_up}").status_code == 404

        assert row_counts(database) == before

    def test_erased_contact_gets_the_same_page_as_an_unknown_one(
        self, client: TestClient, database: Database, tokens: Tokens
    ) -> None:
        gone = signed(TokenPurpose.UNSUBSCRIBE, contact_id="Zz9_gone")
        unknown = visit(client, "GET", f"/u/{gone}")
        with database.transaction(write=True) as session:
            contact = session.exec(select(Contact)).one()
            contact.address = None
            contact.address_display = None
            contact.erased_at = datetime.now(UTC)
            session.add(contact)
        before = row_counts(database)

        for prefix, token in (
            ("u", tokens.unsubscribe),
            ("p", tokens.manage),
            ("c", tokens.confirm),
        ):
            for method in ("GET", "POST"):
                response = visit(client, method, f"/{prefix}/{token}", content=ONE_CLICK)
                assert response.status_code == 404
                if prefix != "c":
                    assert response.text == unknown.text

        assert row_counts(database) == before

    def test_a_token_from_a_key_not_in_the_ring_is_refused(
        self, client: TestClient, database: Database, subscribed_ada: Json
    ) -> None:
        other_ring = parse_signing_keys("t1:another-secret-of-enough-length-0123,t9:" + "k" * 32)
        forged = sign_token(
            other_ring,
            TokenPurpose.MANAGE,
            TokenClaims(
                contact_id=subscribed_ada["contact_id"],
                topic=None,
                campaign_id=None,
                issued_at=datetime.now(UTC),
            ),
        )
        unknown_kid = sign_token(
            other_ring[1:],
            TokenPurpose.MANAGE,
            TokenClaims(
                contact_id=subscribed_ada["contact_id"],
                topic=None,
                campaign_id=None,
                issued_at=datetime.now(UTC),
            ),
        )
        before = row_counts(database)

        for token in (forged, unknown_kid):
            assert visit(client, "POST", f"/u/{token}", content=ONE_CLICK).status_code == 400

        assert row_counts(database) == before


# --- the preference center -----------------------------------------------------------------


def submit(
    client: TestClient,
    page: Page,
    *,
    on: Collection[str] = (),
    off: Collection[str] = (),
    action: str = "save",
) -> httpx2.Response:
    """Submit the preference form as a browser would, after ticking `on` and clearing `off`."""
    (form,) = page.forms
    chosen = ({k for k, checked in page.boxes.items() if checked} | set(on)) - set(off)
    data = {"shown": page.fields.get("shown", []), "topic": sorted(chosen), "action": action}
    return visit(client, "POST", form["action"], data=data)


class TestPreferenceCenter:
    @pytest.fixture
    def preferences_url(
        self,
        client: TestClient,
        links_headers: Headers,
        subscribed_ada: Json,
        offers: str,
        digest: str,
        receipts: str,
    ) -> str:
        return path_of(
            issue_links(client, links_headers, ADA, campaign_id="march")["preferences_url"]
        )

    def test_shows_every_marketing_topic_with_its_state(
        self, client: TestClient, preferences_url: str, receipts: str
    ) -> None:
        response = visit(client, "GET", preferences_url)

        assert response.status_code == 200
        page = parse_page(response)
        assert page.boxes == {"newsletter": True, "offers": True, "digest": False}
        assert receipts not in response.text
        assert "Receipts" not in page.text
        for name in ("Newsletter", "Offers", "Weekly digest", "a•••@example.com"):
            assert name in page.text
        assert ADA not in response.text
        (form,) = page.forms
        assert form == {"method": "post", "action": preferences_url}

    def test_turning_a_topic_off_is_immediate_and_on_again_is_not(
        self,
        client: TestClient,
        reader_headers: Headers,
        database: Database,
        preferences_url: str,
        newsletter: str,
        offers: str,
    ) -> None:
        page = parse_page(visit(client, "GET", preferences_url))

        saved = parse_page(submit(client, page, off={newsletter, offers}))

        assert saved.boxes == {"newsletter": False, "offers": False, "digest": False}
        assert "Your choices are saved" in saved.text
        (ada,) = lookup(client, reader_headers, ADA)
        assert subscription_status(ada, newsletter) == "unsubscribed"
        assert subscription_status(ada, offers) == "unsubscribed"
        off_events = audit_events(database)[-2:]
        assert {e.topic for e in off_events} == {newsletter, offers}
        for event in off_events:
            assert (event.source, event.actor, event.to_status) == (
                "preference_center",
                "recipient",
                "unsubscribed",
            )
            assert event.campaign_id == "march"
            assert event.evidence["channel"] == "preference_center"

        before = row_counts(database)
        again = parse_page(submit(client, saved, on={newsletter}))

        # Turning it back on would reverse the person's own opt-out: whoever holds the link
        # could do that, so it needs proof of the mailbox and nothing changes here.
        assert again.boxes == {"newsletter": False, "offers": False, "digest": False}
        assert "Newsletter stay off: you turned them off yourself" in again.text
        assert "reply to one of our emails" in again.text
        (ada,) = lookup(client, reader_headers, ADA)
        assert subscription_status(ada, newsletter) == "unsubscribed"
        assert row_counts(database) == before

    def test_turning_on_a_topic_the_person_never_refused_is_immediate(
        self,
        client: TestClient,
        reader_headers: Headers,
        writer_headers: Headers,
        database: Database,
        preferences_url: str,
        digest: str,
        offers: str,
    ) -> None:
        # `offers` was turned off by an API client (a CRM sync), not by the person.
        record_change(client, writer_headers, ADA, "unsubscribed", topic=offers)
        page = parse_page(visit(client, "GET", preferences_url))

        saved = parse_page(submit(client, page, on={offers}))

        assert saved.boxes["offers"] is True
        (ada,) = lookup(client, reader_headers, ADA)
        assert subscription_status(ada, offers) == "subscribed"
        on_event = last_event(database)
        assert (on_event.topic, on_event.source, on_event.actor, on_event.to_status) == (
            offers,
            "preference_center",
            "recipient",
            "subscribed",
        )
        assert on_event.evidence["user_agent"] == "testclient"
        assert "stay off" not in saved.text

    def test_saving_without_changes_changes_nothing(
        self, client: TestClient, database: Database, preferences_url: str
    ) -> None:
        page = parse_page(visit(client, "GET", preferences_url))
        before = row_counts(database)

        assert submit(client, page).status_code == 200

        assert row_counts(database) == before

    def test_only_shown_marketing_topics_can_change(
        self,
        client: TestClient,
        reader_headers: Headers,
        writer_headers: Headers,
        database: Database,
        preferences_url: str,
        offers: str,
        receipts: str,
    ) -> None:
        record_change(client, writer_headers, ADA, "subscribed", topic=receipts)
        before = row_counts(database)
        state = lookup(client, reader_headers, ADA)

        # Nothing shown: unticked boxes are not a choice. A transactional or unknown topic
        # shown and ticked or cleared is ignored.
        for data in (
            {"action": "save"},
            {"shown": [receipts, "nope"], "action": "save"},
            {"shown": [receipts], "topic": ["nope", receipts], "action": "save"},
        ):
            assert visit(client, "POST", preferences_url, data=data).status_code == 200

        assert row_counts(database) == before
        assert lookup(client, reader_headers, ADA) == state

    def test_unsubscribe_from_all_suppresses(
        self,
        client: TestClient,
        reader_headers: Headers,
        database: Database,
        preferences_url: str,
    ) -> None:
        page = parse_page(visit(client, "GET", preferences_url))

        after = parse_page(submit(client, page, action="unsubscribe_all"))

        (ada,) = lookup(client, reader_headers, ADA)
        assert ada["suppressed"] is True
        assert "You are unsubscribed from all marketing emails" in after.text
        event = last_event(database)
        assert (event.kind, event.source, event.actor, event.to_status) == (
            "global_consent_change",
            "preference_center",
            "recipient",
            "unsubscribed",
        )

    def test_after_a_global_opt_out_no_box_is_ticked_and_saving_keeps_it(
        self,
        client: TestClient,
        reader_headers: Headers,
        database: Database,
        preferences_url: str,
    ) -> None:
        page = parse_page(visit(client, "GET", preferences_url))
        after = parse_page(submit(client, page, action="unsubscribe_all"))
        before = row_counts(database)

        # Nothing is sent while opted out of everything, so no box may say otherwise; and
        # pressing the main button without choosing anything must not undo the opt-out.
        assert after.boxes == {"newsletter": False, "offers": False, "digest": False}
        assert parse_page(visit(client, "GET", preferences_url)).boxes == after.boxes
        saved = parse_page(submit(client, after))

        assert lookup(client, reader_headers, ADA)[0]["suppressed"] is True
        assert row_counts(database) == before
        assert "You are unsubscribed from all marketing emails" in saved.text

    def test_choosing_a_topic_after_a_global_opt_out_changes_nothing(
        self,
        client: TestClient,
        reader_headers: Headers,
        database: Database,
        settings: Settings,
        preferences_url: str,
        newsletter: str,
        offers: str,
    ) -> None:
        page = parse_page(visit(client, "GET", preferences_url))
        page = parse_page(submit(client, page, action="unsubscribe_all"))
        assert lookup(client, reader_headers, ADA)[0]["suppressed"] is True
        before = row_counts(database)
        state = lookup(client, reader_headers, ADA)

        # The boxes are disabled; a hand-made post ticks them anyway.
        after = parse_page(submit(client, page, on={newsletter, offers}))

        assert lookup(client, reader_headers, ADA) == state
        assert row_counts(database) == before
        assert after.boxes == {"newsletter": False, "offers": False, "digest": False}
        assert "Newsletter, Offers stay off" in after.text
        assert "You are unsubscribed from all marketing emails" in after.text
        with TestClient(
            create_app(settings.model_copy(update={"support_contact": "privacy@example.com"}))
        ) as desk_client:
            named = parse_page(submit(desk_client, page, on={newsletter}))
        assert "To receive them again, contact privacy@example.com." in named.text
        assert lookup(client, reader_headers, ADA) == state

    def test_api_client_cannot_lift_a_global_opt_out_made_here(
        self,
        client: TestClient,
        writer_headers: Headers,
        reader_headers: Headers,
        preferences_url: str,
        newsletter: str,
    ) -> None:
        submit(client, parse_page(visit(client, "GET", preferences_url)), action="unsubscribe_all")

        record_change(client, writer_headers, ADA, "subscribed", topic=newsletter, expect=409)
        record_change(client, writer_headers, ADA, "subscribed", expect=409)

        (ada,) = lookup(client, reader_headers, ADA)
        assert ada["suppressed"] is True

    def test_ticking_a_double_opt_in_topic_makes_it_pending(
        self,
        client: TestClient,
        reader_headers: Headers,
        preferences_url: str,
        digest: str,
    ) -> None:
        page = parse_page(visit(client, "GET", preferences_url))

        response = submit(client, page, on={digest})

        (ada,) = lookup(client, reader_headers, ADA)
        assert subscription_status(ada, digest) == "pending"
        after = parse_page(response)
        assert after.boxes[digest] is True
        assert "awaiting your confirmation" in after.text
        assert "Weekly digest" in after.text


# --- double opt-in --------------------------------------------------------------------------


class TestConfirm:
    @pytest.fixture
    def pending(self, client: TestClient, writer_headers: Headers, digest: str) -> Json:
        answer = record_change(
            client, writer_headers, ADA, "subscribed", topic=digest, campaign_id="signup"
        )
        assert answer["status"] == "pending"
        assert answer["changed"] is True
        assert answer["confirm_url"].startswith("http://testserver/c/")
        return answer

    def test_get_shows_a_button_and_changes_nothing(
        self,
        client: TestClient,
        database: Database,
        reader_headers: Headers,
        pending: Json,
        digest: str,
    ) -> None:
        before = row_counts(database)

        response = visit(client, "GET", pending["confirm_url"])

        assert response.status_code == 200
        page = parse_page(response)
        (form,) = page.forms
        assert form == {"method": "post", "action": path_of(pending["confirm_url"])}
        assert "Weekly digest" in page.text
        assert row_counts(database) == before
        assert subscription_status(lookup(client, reader_headers, ADA)[0], digest) == "pending"

    def test_post_confirms_with_a_confirmation_event(
        self,
        client: TestClient,
        database: Database,
        reader_headers: Headers,
        pending: Json,
        digest: str,
    ) -> None:
        response = visit(client, "POST", pending["confirm_url"])

        assert response.status_code == 200
        assert "Subscription confirmed" in parse_page(response).text
        assert subscription_status(lookup(client, reader_headers, ADA)[0], digest) == "subscribed"
        event = last_event(database)
        assert (event.topic, event.from_status, event.to_status, event.outcome) == (
            digest,
            "pending",
            "subscribed",
            "applied",
        )
        assert (event.source, event.actor, event.campaign_id) == (
            "confirmation",
            "recipient",
            "signup",
        )
        assert event.evidence["channel"] == "confirmation"
        assert event.evidence["token_kid"] == RING[0].kid

    def test_confirmed_page_links_to_preferences_with_a_manage_token(
        self, client: TestClient, pending: Json
    ) -> None:
        page = parse_page(visit(client, "POST", pending["confirm_url"]))

        (link,) = [u for u in page.urls if "/p/" in u]
        assert token_of(link) != token_of(pending["confirm_url"])
        assert visit(client, "GET", link).status_code == 200

    def test_posting_it_again_changes_nothing(
        self, client: TestClient, database: Database, reader_headers: Headers, pending: Json
    ) -> None:
        visit(client, "POST", pending["confirm_url"])
        before = row_counts(database)
        state = lookup(client, reader_headers, ADA)

        again = visit(client, "POST", pending["confirm_url"])

        assert again.status_code == 200
        assert row_counts(database) == before
        assert lookup(client, reader_headers, ADA) == state

    @pytest.mark.parametrize("opt_out", ["topic", "all"])
    def test_a_link_from_before_an_opt_out_has_expired(
        self,
        client: TestClient,
        database: Database,
        links_headers: Headers,
        reader_headers: Headers,
        pending: Json,
        digest: str,
        opt_out: str,
    ) -> None:
        fields = {"topic": digest} if opt_out == "topic" else {}
        one_click(client, issue_links(client, links_headers, ADA, **fields)["unsubscribe_url"])
        before = row_counts(database)
        state = lookup(client, reader_headers, ADA)

        for method in ("GET", "POST"):
            response = visit(client, method, pending["confirm_url"])
            assert response.status_code == 400
            assert "has expired or was already replaced" in parse_page(response).text

        assert row_counts(database) == before
        assert lookup(client, reader_headers, ADA) == state

    def test_a_link_replaced_by_a_newer_request_has_expired(
        self,
        client: TestClient,
        writer_headers: Headers,
        reader_headers: Headers,
        pending: Json,
        digest: str,
    ) -> None:
        record_change(client, writer_headers, ADA, "unsubscribed", topic=digest)
        newer = record_change(client, writer_headers, ADA, "subscribed", topic=digest)

        assert visit(client, "POST", pending["confirm_url"]).status_code == 400
        assert subscription_status(lookup(client, reader_headers, ADA)[0], digest) == "pending"
        assert visit(client, "POST", newer["confirm_url"]).status_code == 200
        assert subscription_status(lookup(client, reader_headers, ADA)[0], digest) == "subscribed"

    def test_a_link_older_than_its_lifetime_has_expired(
        self,
        client: TestClient,
        database: Database,
        settings: Settings,
        reader_headers: Headers,
        pending: Json,
        digest: str,
    ) -> None:
        row = subscription_row(database, ADA, digest)
        assert row is not None
        lifetime = timedelta(days=settings.confirm_link_ttl_days)

        def confirm_token(age: timedelta) -> str:
            return signed(
                TokenPurpose.CONFIRM,
                contact_id=pending["contact_id"],
                topic=digest,
                issued_at=datetime.now(UTC) - age,
                pending_event=row.event_id,
            )

        expired = confirm_token(lifetime + timedelta(days=1))
        before = row_counts(database)

        for method in ("GET", "POST"):
            response = visit(client, method, f"/c/{expired}")
            assert response.status_code == 400
            assert "has expired" in parse_page(response).text
        assert row_counts(database) == before
        assert subscription_status(lookup(client, reader_headers, ADA)[0], digest) == "pending"
        # The same token a day younger than the lifetime works: only the age was wrong.
        assert (
            visit(client, "POST", f"/c/{confirm_token(lifetime - timedelta(days=1))}").status_code
            == 200
        )
        assert subscription_status(lookup(client, reader_headers, ADA)[0], digest) == "subscribed"


# --- language --------------------------------------------------------------------------------


class TestLanguage:
    def test_accept_language_picks_german(self, client: TestClient, tokens: Tokens) -> None:
        response = visit(
            client,
            "GET",
            f"/u/{tokens.unsubscribe}",
            headers={"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"},
        )

        page = parse_page(response)
        assert page.lang == "de"
        assert response.headers["content-language"] == "de"
        assert "Abmelden" in page.text
        assert "Unsubscribe" not in page.text

    def test_query_overrides_accept_language(self, client: TestClient, tokens: Tokens) -> None:
        response = visit(
            client, "GET", f"/u/{tokens.unsubscribe}?lang=en", headers={"Accept-Language": "de"}
        )

        page = parse_page(response)
        assert page.lang == "en"
        assert "Unsubscribe" in page.text
        assert "Abmelden" not in page.text

    def test_unknown_language_falls_back_to_english(
        self, client: TestClient, tokens: Tokens
    ) -> None:
        for query, accept in (
            ("", "xx-YY, tlh;q=0.9"),
            ("?lang=zz", "fr"),
            ("?lang=../../etc", ""),
            ("?lang=", "*"),
        ):
            url = f"/p/{tokens.manage}{query}"
            page = parse_page(visit(client, "GET", url, headers={"Accept-Language": accept}))
            assert page.lang == "en", (query, accept)
            assert "Email preferences" in page.text

    def test_invalid_link_page_is_translated(self, client: TestClient) -> None:
        for prefix in TOKEN_PREFIXES:
            response = visit(client, "GET", f"/{prefix}/broken", headers={"Accept-Language": "de"})

            assert response.status_code == 400
            page = parse_page(response)
            assert page.lang == "de"
            assert "Dieser Link funktioniert nicht" in page.text

    def test_every_page_exists_in_german(self, client: TestClient, tokens: Tokens) -> None:
        german = {"Accept-Language": "de"}
        pages = [
            visit(client, "GET", f"/u/{tokens.unsubscribe}", headers=german),
            visit(client, "GET", f"/p/{tokens.manage}", headers=german),
            visit(client, "GET", f"/c/{tokens.confirm}", headers=german),
            visit(client, "POST", f"/c/{tokens.confirm}", headers=german),
            visit(client, "POST", f"/u/{tokens.unsubscribe}", headers=german, data={"via": "page"}),
            visit(client, "POST", f"/p/{tokens.manage}", headers=german, data={"action": "save"}),
        ]

        titles = [
            "Abmelden",
            "E-Mail-Einstellungen",
            "Anmeldung bestätigen",
            "Anmeldung bestätigt",
            "Sie sind abgemeldet",
            "E-Mail-Einstellungen",
        ]
        for response, title in zip(pages, titles, strict=True):
            page = parse_page(response)
            assert response.status_code == 200
            assert page.lang == "de"
            assert title in page.text


# --- no redirects, no links elsewhere -----------------------------------------------------------


class TestNoRedirects:
    def test_pages_link_only_to_the_service_itself(
        self, client: TestClient, settings: Settings, tokens: Tokens
    ) -> None:
        evil = "?next=https://evil.example/&redirect=//evil.example&return_to=https%3A%2F%2Fevil.example"
        responses = [
            visit(client, "GET", f"/u/{tokens.unsubscribe}{evil}"),
            visit(client, "GET", f"/p/{tokens.manage_all}{evil}"),
            visit(client, "GET", f"/c/{tokens.confirm}{evil}"),
            visit(client, "GET", f"/u/broken{evil}"),
            visit(client, "POST", f"/p/{tokens.manage}{evil}", data={"action": "save"}),
            visit(client, "POST", f"/c/{tokens.confirm}{evil}"),
            visit(client, "POST", f"/u/{tokens.unsubscribe}{evil}", content=ONE_CLICK),
        ]

        for response in responses:
            assert response.status_code in PAGE_STATUSES
            assert "evil.example" not in response.text
            for url in parse_page(response).urls:
                parts = urlsplit(url)
                if parts.scheme or parts.netloc:
                    assert url.startswith(f"{settings.base_url}/"), url
                else:
                    assert not url.startswith("//"), url
            for absolute in re.findall(r"https?://[^\s\"'<>]+", response.text):
                assert absolute.startswith(f"{settings.base_url}/"), absolute

    def test_no_method_on_a_token_url_answers_with_a_redirect(
        self, client: TestClient, database: Database, tokens: Tokens
    ) -> None:
        before = row_counts(database)

        for prefix in TOKEN_PREFIXES:
            token = tokens.for_page(prefix)
            for path in (
                f"/{prefix}/{token}",
                f"/{prefix}/{token}/",
                f"/{prefix}//evil.example",
                f"/{prefix}/https://evil.example",
            ):
                for method in ("GET", "HEAD", "OPTIONS"):
                    visit(client, method, path)
                    visit(client, method, path, headers={"Host": "evil.example"})

        assert row_counts(database) == before


# --- arbitrary tokens ---------------------------------------------------------------------------


def _signed_garbage(
    purpose: TokenPurpose, contact_id: str, topic: str | None, campaign: str | None
) -> str:
    return signed(purpose, contact_id=contact_id, topic=topic, campaign_id=campaign)


TOKENS = st.one_of(
    st.text(max_size=300),
    st.text(max_size=300).map(lambda t: quote(t, safe="")),
    st.builds(
        lambda v, a, b: f"{v}.{RING[0].kid}.{a}.{b}",
        st.sampled_from(["1", "2"]),
        st.text(max_size=80),
        st.text(max_size=40),
    ),
    st.builds(
        _signed_garbage,
        st.sampled_from(list(TokenPurpose)),
        st.text(max_size=60),
        st.none() | st.text(max_size=60),
        st.none() | st.text(max_size=60),
    ),
)


class TestArbitraryTokens:
    @pytest.fixture
    def snapshot(self, database: Database, subscribed_ada: Json) -> dict[str, int]:
        return row_counts(database)

    @hypothesis_settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        token=TOKENS,
        prefix=st.sampled_from(TOKEN_PREFIXES),
        method=st.sampled_from(["GET", "POST"]),
    )
    def test_never_a_server_error_nor_a_change(
        self,
        client: TestClient,
        database: Database,
        snapshot: dict[str, int],
        token: str,
        prefix: str,
        method: str,
    ) -> None:
        response = client.request(
            method,
            f"/{prefix}/{quote(token, safe='')}",
            content=ACTING_BODY[prefix],
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            follow_redirects=False,
        )

        assert response.status_code < 500, response.text
        assert response.status_code in {400, 404}, token
        assert_recipient_headers(response)
        assert row_counts(database) == snapshot
