"""The logs of a real `prefcenter serve --workers 2`, in text and in JSON, on SQLite and
PostgreSQL: after a storm of one-clicks, preference saves, confirmations, audit searches, a
console search and bad links, the log holds no token (nor 20 characters of one) and no address
(in any case, escaped or not), while every request is there with its fingerprint, so that a
server that logged nothing would fail too."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest

from prefcenter.apikeys.schemas import Scope
from prefcenter.db import Database
from prefcenter.logs import REQUEST_LOGGER, fingerprint
from tests.admin.console import PASSWORD, create_user, form_token
from tests.support.harness import make_settings
from tests.support.live_server import fresh_database_url, issue_live_key, live_server

pytestmark = pytest.mark.slow

RUNS = [
    (engine, log_format) for engine in ("sqlite", "postgresql") for log_format in ("text", "json")
]
WORKERS = 2
RECIPIENTS = 12
ONE_CLICKS = 3  # per link: mail clients and scanners repeat them
WINDOW = 20  # no run of this many characters of a token may appear
TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Recipient:
    address: str
    manage: str  # the newsletter's unsubscribe link
    manage_all: str  # the preference link, from the batch
    unsubscribe_all: str  # unsubscribe from all marketing, from the batch
    confirm: str  # double opt-in of the digest


@dataclass(frozen=True, slots=True)
class Storm:
    log_format: str
    log: str
    tag: str  # in every address's local part, and nowhere else
    recipients: list[Recipient]
    bad_tokens: list[str]

    @property
    def tokens(self) -> list[str]:
        return [t for r in self.recipients for t in (r.manage, r.manage_all, r.confirm)]

    @property
    def lines(self) -> list[str]:
        return [line for line in self.log.splitlines() if line.strip()]

    def messages(self, logger: str) -> list[str]:
        """The messages of one logger, whatever the format."""
        if self.log_format == "json":
            entries = [json.loads(line) for line in self.lines if line.startswith("{")]
            return [e["message"] for e in entries if e["logger"] == logger]
        prefix = f"INFO {logger}: "
        return [line.removeprefix(prefix) for line in self.lines if line.startswith(prefix)]

    @property
    def requests(self) -> list[str]:
        """Each request line without its client, route, time and id: `"GET /path HTTP/1.1" 200`."""
        return [
            m.split(" - ", 1)[1].split('" ', 1)[0] + '" ' + m.split('" ', 1)[1].split(" ", 1)[0]
            for m in self.messages(REQUEST_LOGGER)
        ]


def token_of(url: str) -> str:
    return urlsplit(url).path.split("/", 2)[2]


def check(answer: httpx.Response, *expected: int) -> None:
    assert answer.status_code in expected, f"{answer.request.url.path}: {answer.text[:300]}"


def prepare(api: httpx.Client, tag: str) -> list[Recipient]:
    """Topics, subscriptions (the digest pending), and links through the API."""
    topic = {"name": "News", "kind": "marketing", "consent": "opt_in"}
    check(api.put("/v1/topics/newsletter", json=topic), 201)
    check(api.put("/v1/topics/digest", json={**topic, "double_opt_in": True}), 201)
    addresses = [f"Ada.{tag}{i}+News@Example.ORG" for i in range(RECIPIENTS)]
    confirms = []
    for address in addresses:
        body = {"email": address, "status": "subscribed", "source": "signup_form"}
        check(api.post("/v1/consents", json={**body, "topic": "newsletter"}), 200)
        pending = api.post("/v1/consents", json={**body, "topic": "digest"})
        check(pending, 200)
        confirms.append(token_of(pending.json()["confirm_url"]))
    manage = []
    for address in addresses:
        links = api.post(
            "/v1/links", json={"email": address, "topic": "newsletter", "campaign_id": "spring"}
        )
        check(links, 200)
        manage.append(token_of(links.json()["unsubscribe_url"]))
    batch = api.post("/v1/links/batch", json={"items": [{"email": a} for a in addresses]})
    check(batch, 200)
    manage_all = [token_of(item["preferences_url"]) for item in batch.json()["items"]]
    unsubscribe_all = [token_of(item["unsubscribe_url"]) for item in batch.json()["items"]]
    return [
        Recipient(address=a, manage=m, manage_all=p, unsubscribe_all=u, confirm=c)
        for a, m, p, u, c in zip(
            addresses, manage, manage_all, unsubscribe_all, confirms, strict=True
        )
    ]


async def recipient_storm(base_url: str, recipients: list[Recipient], bad: list[str]) -> None:
    """What mail clients, scanners and recipients do with the links, many at once."""
    limits = httpx.Limits(max_connections=16)
    one_click = {"content-type": "application/x-www-form-urlencoded"}
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=TIMEOUT_S) as client:

        async def links_of(r: Recipient) -> None:
            check(await client.get(f"/u/{r.manage}"), 200)
            check(await client.get(f"/u/{r.manage}", params={"lang": "de"}), 200)
            # The same link with its slash escaped: still the page, still the link.
            check(await client.get(f"/u%2F{r.manage}"), 200)
            for _ in range(ONE_CLICKS):
                answer = await client.post(
                    f"/u/{r.manage}", content=b"List-Unsubscribe=One-Click", headers=one_click
                )
                check(answer, 200)
            check(await client.get(f"/c/{r.confirm}"), 200)
            check(await client.post(f"/c/{r.confirm}"), 200)
            check(await client.get(f"/p/{r.manage_all}"), 200)
            saved = await client.post(
                f"/p/{r.manage_all}",
                data={"shown": ["newsletter", "digest"], "topic": ["newsletter"]},
            )
            check(saved, 200)
            check(await client.post(f"/u/{r.unsubscribe_all}", data={"via": "page"}), 200)

        async def bad_links(token: str) -> None:
            for method in ("GET", "POST"):
                check(await client.request(method, f"/u/{token}"), 400, 404)
                check(await client.request(method, f"/p/{token}"), 400, 404)

        await asyncio.gather(*(links_of(r) for r in recipients), *(bad_links(t) for t in bad))


def audit_searches(api: httpx.Client, recipients: list[Recipient]) -> None:
    """Searches that put an address in a URL, as callers write them (and get them wrong)."""
    for r in recipients:
        found = api.get("/v1/audit", params={"email": r.address})
        check(found, 200)
        assert found.json()["events"], "the search found the recipient's events"
        check(api.get("/v1/audit", params={"email": r.address.upper(), "limit": 2}), 200)
        check(api.get("/v1/audit/export", params={"email": r.address, "format": "jsonl"}), 200)
        # An address where a contact id belongs: a 404 whose path holds the address.
        check(api.get(f"/v1/contacts/{r.address}"), 404)
        check(api.get(f"/v1/contacts/{quote(r.address, safe='')}"), 404)


def console_search(base_url: str, address: str) -> None:
    with httpx.Client(base_url=base_url, timeout=TIMEOUT_S, follow_redirects=True) as browser:
        page = browser.get("/admin/sign-in")
        signed_in = browser.post(
            "/admin/sign-in",
            data={
                "csrf_token": form_token(page.text),
                "method": "password",
                "username": "desk",
                "password": PASSWORD,
            },
        )
        check(signed_in, 200)  # the dashboard, after the redirect
        found = browser.post(
            "/admin/contacts", data={"csrf_token": form_token(signed_in.text), "q": address}
        )
        check(found, 200)
        assert str(found.url.path).startswith("/admin/contacts/"), found.url
        # An old bookmark with the address in its query string: answered, searched for nothing.
        check(browser.get("/admin/contacts", params={"q": address}), 200)
        check(browser.get("/admin/audit", params={"email": address}), 200)


@pytest.fixture(scope="module", params=RUNS, ids=["-".join(run) for run in RUNS])
def storm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Storm:
    engine, log_format = request.param
    tmp: Path = tmp_path_factory.mktemp(f"logs-{engine}-{log_format}")
    url = fresh_database_url(request, engine, tmp)
    headers = issue_live_key(url, Scope.ADMIN, name="logs")
    database = Database(make_settings(url))
    try:
        create_user(database, "desk")
    finally:
        database.dispose()
    tag = uuid.uuid4().hex[:12]
    env = {"PREFCENTER_LOG_FORMAT": log_format}
    with (
        live_server(url, log_dir=tmp, workers=WORKERS, extra_env=env) as server,
        httpx.Client(base_url=server.base_url, headers=headers, timeout=TIMEOUT_S) as api,
    ):
        recipients = prepare(api, tag)
        first = recipients[0].manage
        # A forged tag, a link cut short, a link with junk after it.
        bad = [first[:-4] + ("AAAA" if not first.endswith("AAAA") else "BBBB"), first[:60]]
        bad.append(f"{first}/x")
        asyncio.run(recipient_storm(server.base_url, recipients, bad))
        audit_searches(api, recipients)
        console_search(server.base_url, recipients[1].address.lower())
    # The server has stopped: every worker's lines are in the file.
    return Storm(
        log_format=log_format,
        log=server.log(),
        tag=tag,
        recipients=recipients,
        bad_tokens=bad,
    )


def test_no_token_nor_any_part_of_one(storm: Storm) -> None:
    for token in [*storm.tokens, *storm.bad_tokens]:
        assert len(token) > WINDOW
        leaked = [
            token[i : i + WINDOW]
            for i in range(len(token) - WINDOW + 1)
            if token[i : i + WINDOW] in storm.log
        ]
        assert leaked == [], f"{fingerprint(token)}: {leaked[:3]}"


def test_no_address_in_any_case_or_escape(storm: Storm) -> None:
    log = storm.log.lower()
    assert storm.tag not in log
    assert "example.org" not in log
    for r in storm.recipients:
        for form in (r.address, quote(r.address, safe=""), quote(r.address, safe="@+")):
            assert form.lower() not in log


def test_every_recipient_request_is_there_by_its_fingerprint(storm: Storm) -> None:
    requests = storm.requests
    for r in storm.recipients:
        manage, manage_all = fingerprint(r.manage), fingerprint(r.manage_all)
        confirm = fingerprint(r.confirm)
        assert requests.count(f'"POST /u/{manage} HTTP/1.1" 200') == ONE_CLICKS
        assert requests.count(f'"GET /u/{manage} HTTP/1.1" 200') == 2
        assert requests.count(f'"GET /u/{manage}?[redacted] HTTP/1.1" 200') == 1
        assert requests.count(f'"POST /p/{manage_all} HTTP/1.1" 200') == 1
        unsubscribe_all = fingerprint(r.unsubscribe_all)
        assert requests.count(f'"POST /u/{unsubscribe_all} HTTP/1.1" 200') == 1
        assert requests.count(f'"POST /c/{confirm} HTTP/1.1" 200') == 1
    for token in storm.bad_tokens:
        for method in ("GET", "POST"):
            assert any(
                line.startswith(f'"{method} /u/{fingerprint(token)} HTTP/1.1" 4')
                for line in requests
            )


def test_searches_are_there_without_their_query(storm: Storm) -> None:
    requests = storm.requests
    assert requests.count('"GET /v1/audit?[redacted] HTTP/1.1" 200') == 2 * RECIPIENTS
    assert requests.count('"GET /v1/audit/export?[redacted] HTTP/1.1" 200') == RECIPIENTS
    assert requests.count('"GET /v1/contacts/[address] HTTP/1.1" 404') == 2 * RECIPIENTS
    assert requests.count('"POST /admin/contacts HTTP/1.1" 303') == 1
    assert requests.count('"GET /admin/contacts?[redacted] HTTP/1.1" 200') == 1
    assert requests.count('"GET /admin/audit?[redacted] HTTP/1.1" 200') == 1


def test_lines_are_in_the_format_asked_for(storm: Storm) -> None:
    lines = storm.lines
    access = [line for line in lines if REQUEST_LOGGER in line]
    assert len(access) > RECIPIENTS * 10
    if storm.log_format == "json":
        entries = [json.loads(line) for line in lines]  # every line, from every process
        assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
        loggers = {e["logger"] for e in entries}
        assert {REQUEST_LOGGER, "uvicorn.error"} <= loggers
        assert "uvicorn.access" not in loggers  # the request line replaces it
        requests = [e for e in entries if e["logger"] == REQUEST_LOGGER]
        assert all(
            {"method", "path", "route", "status", "duration_ms", "request_id"} <= set(e)
            for e in requests
        )
        assert len({e["process"] for e in requests}) <= WORKERS
        ready = [e for e in entries if e["message"] == "Application startup complete."]
        assert len(ready) == WORKERS
    else:
        text_access = re.compile(
            r'^INFO prefcenter\.request: 127\.0\.0\.1:\d+ - "[A-Z]+ /\S* HTTP/1\.1" \d{3} '
            r"\S+ \d+(\.\d)?ms id=[0-9a-f]{32}$"
        )
        assert all(text_access.match(line) for line in access), access[:3]
        assert (
            sum(line == "INFO uvicorn.error: Application startup complete." for line in lines)
            == WORKERS
        )
