"""Erasure holds on every path: after a person is erased, no route of the API and no CLI command
that takes an address stores it again, whatever its letter case or Unicode form, and
eligibility answers it suppressed.

The routes come from `/openapi.json`: a mutating route that this file does not know fails the
test, so a new route must say here how it treats an erased address.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select
from typer.testing import CliRunner

from prefcenter.apikeys.schemas import Scope
from prefcenter.cli import cli
from prefcenter.contacts.models import Contact
from prefcenter.db import Database, utcnow
from prefcenter.settings import Settings
from tests.consent.test_erasure import stored_text
from tests.support.factories import Headers, audit_events, make_topic, record_change
from tests.support.harness import TEST_AUDIT_KEY, TEST_SIGNING_KEYS, issue_key

ERASED = "zoë@bücher.example"
# The same mailbox, written as senders and lists write it.
VARIANTS = (
    "Zoë@Bücher.Example",  # another letter case
    "ZOË@BÜCHER.EXAMPLE",
    unicodedata.normalize("NFD", ERASED),  # decomposed: o + combining diaeresis
    "zoë@xn--bcher-kva.example",  # the domain as IDNA
)
# What must be found nowhere afterwards: the address, its domain and local part as stored.
NEEDLES = (ERASED, "zoë@", "bücher.example", "xn--bcher-kva", unicodedata.normalize("NFD", "zoë"))

Call = Callable[[TestClient, Headers, str], httpx2.Response]


def _consent(status: str, topic: str | None) -> Call:
    def call(client: TestClient, headers: Headers, address: str) -> httpx2.Response:
        body: dict[str, object] = {"email": address, "status": status, "source": "crm"}
        if topic is not None:
            body["topic"] = topic
        if status == "subscribed":
            body["evidence"] = {"form": "signup"}
        return client.post("/v1/consents", json=body, headers=headers)

    return call


def _consent_batch(client: TestClient, headers: Headers, address: str) -> httpx2.Response:
    """Every kind of change for the address in one batch: each slot gets `address-erased`."""
    changes = [
        {"email": address, "status": status, "source": "crm", **topic}
        for status in ("subscribed", "unsubscribed")
        for topic in ({"topic": "newsletter"}, {})
    ]
    response = client.post("/v1/consents/batch", json={"changes": changes}, headers=headers)
    if response.status_code == 200:
        slots = response.json()["results"]
        assert [r["problem"]["type"].rsplit(":", 1)[-1] for r in slots] == ["address-erased"] * 4
        assert address not in response.text
    return response


def _post_json(path: str, body_of: Callable[[str], object]) -> Call:
    def call(client: TestClient, headers: Headers, address: str) -> httpx2.Response:
        return client.post(path, json=body_of(address), headers=headers)

    return call


def _stream(client: TestClient, headers: Headers, address: str) -> httpx2.Response:
    return client.post(
        "/v1/eligibility/stream",
        params={"topic": "newsletter"},
        content=f"{address}\n".encode(),
        headers={**headers, "Content-Type": "text/plain"},
    )


def _import(client: TestClient, headers: Headers, address: str) -> httpx2.Response:
    return client.post(
        "/v1/imports",
        params={"topic": "newsletter", "source": "crm"},
        content=f"email,status\r\n{address},subscribed\r\n".encode(),
        headers={**headers, "Content-Type": "text/csv"},
    )


def _correct_address(client: TestClient, headers: Headers, address: str) -> httpx2.Response:
    other = record_change(client, headers, "bob@example.com", "subscribed", topic="newsletter")
    return client.patch(
        f"/v1/contacts/{other['contact_id']}",
        json={"address": address, "reason": "ticket 42: the person asked"},
        headers=headers,
    )


def _request_link(client: TestClient, headers: Headers, address: str) -> httpx2.Response:
    return client.post(
        "/p",
        content=f"email={address}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


# Every mutating route that takes an address, with the calls that try it (each with each
# variant). Expected: refused (`address-erased`) or answered, and nothing stored either way.
ADDRESS_ROUTES: dict[tuple[str, str], tuple[Call, ...]] = {
    ("POST", "/v1/consents"): (
        _consent("subscribed", "newsletter"),
        _consent("unsubscribed", "newsletter"),
        _consent("subscribed", None),
        _consent("unsubscribed", None),
    ),
    ("POST", "/v1/consents/batch"): (_consent_batch,),
    ("POST", "/v1/contacts/lookup"): (
        _post_json("/v1/contacts/lookup", lambda a: {"emails": [a]}),
    ),
    ("PATCH", "/v1/contacts/{contact_id}"): (_correct_address,),
    ("POST", "/v1/links"): (
        _post_json("/v1/links", lambda a: {"email": a}),
        _post_json("/v1/links", lambda a: {"email": a, "topic": "newsletter"}),
    ),
    ("POST", "/v1/links/batch"): (
        _post_json("/v1/links/batch", lambda a: {"items": [{"email": a}]}),
    ),
    ("POST", "/v1/eligibility"): (
        _post_json("/v1/eligibility", lambda a: {"topic": "newsletter", "emails": [a]}),
    ),
    ("POST", "/v1/eligibility/stream"): (_stream,),
    ("POST", "/v1/imports"): (_import,),
    ("POST", "/p"): (_request_link,),  # "email me my link": no key; only a keyed hash is kept
}
# Mutating routes that take no address: a topic's definition, an erasure by id, webhook
# endpoints, and the recipients' pages, which take a token (an erased contact's token gets the
# 404 page, test_router.TestBadTokens).
ADDRESS_FREE_ROUTES = {
    ("PUT", "/v1/topics/{key}"),
    ("DELETE", "/v1/contacts/{contact_id}"),
    ("POST", "/u/{token}"),
    ("POST", "/p/{token}"),
    ("POST", "/c/{token}"),
    # Lifting a bounce takes an id; the mailto: route takes a message with a token; the ESPs'
    # routes name addresses but only look up existing contacts, never store one (tested with
    # an erased address: tests/inbound/test_end_to_end.py, TestUnknown).
    ("DELETE", "/v1/contacts/{contact_id}/bounce"),
    ("POST", "/v1/inbound/email"),
    ("POST", "/v1/inbound/ses"),
    ("POST", "/v1/inbound/sendgrid"),
    ("POST", "/v1/inbound/mailgun"),
    ("POST", "/v1/inbound/postmark"),
    # Webhook endpoints: a URL and event types, never a contact's address.
    ("POST", "/v1/webhooks"),
    ("PATCH", "/v1/webhooks/{endpoint_id}"),
    ("DELETE", "/v1/webhooks/{endpoint_id}"),
    ("POST", "/v1/webhooks/{endpoint_id}/rotate-secret"),
    ("POST", "/v1/webhooks/{endpoint_id}/replay"),
    # Notices: a name, a kind, a version's text; a run mails only contacts not erased.
    ("PUT", "/v1/notices/{key}"),
    ("POST", "/v1/notices/{key}/versions"),
    # Marks of a run a team mails itself name contact ids, never an address (an erased
    # contact's mark is refused: tests/notices/test_team_run.py).
    ("POST", "/v1/notices/{key}/versions/{version}/notification/deliveries"),
}


def mutating_routes(client: TestClient) -> set[tuple[str, str]]:
    spec = client.get("/openapi.json").json()
    return {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method in operations
        if method in {"post", "put", "patch", "delete"}
    }


@pytest.fixture
def erased(client: TestClient, admin_headers: Headers) -> None:
    make_topic(client, admin_headers, "newsletter")
    make_topic(client, admin_headers, "offers", consent="opt_out")
    zoe = record_change(client, admin_headers, ERASED, "subscribed", topic="newsletter")
    response = client.delete(f"/v1/contacts/{zoe['contact_id']}", headers=admin_headers)
    assert response.status_code == 200, response.text


def assert_suppressed(client: TestClient, headers: Headers) -> None:
    for topic in ("newsletter", "offers"):
        answer = client.post(
            "/v1/eligibility", json={"topic": topic, "emails": [ERASED, *VARIANTS]}, headers=headers
        )
        assert answer.status_code == 200, answer.text
        assert {(r["allowed"], r["reason"]) for r in answer.json()["results"]} == {
            (False, "suppressed")
        }
    lookup = client.post("/v1/contacts/lookup", json={"emails": list(VARIANTS)}, headers=headers)
    assert {(c["contact_id"], c["suppressed"]) for c in lookup.json()["contacts"]} == {(None, True)}


def test_every_mutating_route_is_classified(client: TestClient) -> None:
    assert mutating_routes(client) == set(ADDRESS_ROUTES) | ADDRESS_FREE_ROUTES


@pytest.mark.usefixtures("erased")
def test_no_route_stores_an_erased_address_again(
    client: TestClient, admin_headers: Headers, database: Database
) -> None:
    answers: dict[tuple[str, str], set[int]] = {}
    for route, calls in ADDRESS_ROUTES.items():
        for call in calls:
            for address in VARIANTS:
                response = call(client, admin_headers, address)
                assert response.status_code < 500, (route, address, response.text)
                if response.status_code == 409:
                    assert response.json()["type"].endswith("address-erased"), response.text
                answers.setdefault(route, set()).add(response.status_code)

    # Writes are refused; reads answer (suppressed); an import reports the row as erased.
    assert answers[("POST", "/v1/consents")] == {409}
    assert answers[("PATCH", "/v1/contacts/{contact_id}")] == {409}
    assert answers[("POST", "/v1/links")] == {409}
    assert answers[("POST", "/v1/links/batch")] == {200}
    assert answers[("POST", "/v1/consents/batch")] == {200}  # each slot refused, as above
    assert_stored_nowhere_but(database, "bob@example.com")
    assert_suppressed(client, admin_headers)


@pytest.mark.usefixtures("erased")
def test_a_links_batch_answers_the_erased_item_with_its_problem(
    client: TestClient, database: Database
) -> None:
    links_headers = issue_key(database, Scope.LINKS, name="mailer")
    response = client.post(
        "/v1/links/batch",
        json={"items": [{"email": "amy@example.com"}, {"email": VARIANTS[0]}]},
        headers=links_headers,
    )

    assert response.status_code == 200, response.text
    first, second = response.json()["items"]
    assert first["unsubscribe_url"]
    assert set(second) == {"problem"}
    assert second["problem"]["status"] == 409
    assert second["problem"]["type"].endswith("address-erased")
    assert second["problem"]["errors"] == [{"field": "items[1].email", "detail": "was erased"}]
    assert VARIANTS[0] not in response.text


@pytest.mark.usefixtures("erased")
def test_the_import_command_stores_no_erased_address(
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    database: Database,
    client: TestClient,
    admin_headers: Headers,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("PREFCENTER_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PREFCENTER_SIGNING_KEYS", TEST_SIGNING_KEYS)
    monkeypatch.setenv("PREFCENTER_AUDIT_KEY", TEST_AUDIT_KEY)
    rows = "".join(f"{address},{status}\n" for address in VARIANTS for status in ("subscribed",))
    file = tmp_path / "people.csv"
    file.write_text(f"email,status\n{rows}unsubscribed@example.com,unsubscribed\n")

    result = CliRunner().invoke(
        cli, ["import", str(file), "--topic", "newsletter", "--source", "crm", "--json"]
    )

    assert result.exit_code == 0, result.output
    assert_stored_nowhere_but(database, "unsubscribed@example.com")
    assert_suppressed(client, admin_headers)


def assert_stored_nowhere_but(database: Database, *allowed: str) -> None:
    with database.transaction(write=False) as session:
        stored = {
            c.address
            for c in session.exec(select(Contact).where(col(Contact.address).is_not(None)))
        }
    assert stored <= set(allowed)
    leaks = [
        (table, column)
        for table, column, text in stored_text(database)
        for needle in NEEDLES
        if needle in unicodedata.normalize("NFC", text).lower()
    ]
    assert leaks == []


@pytest.mark.usefixtures("erased")
def test_re_erase_finds_and_erases_contacts_stored_again_before_the_fix(
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    database: Database,
    client: TestClient,
    admin_headers: Headers,
) -> None:
    """Before the fix, `POST /v1/links` stored an erased address again as a new contact: the
    repair command finds such rows by keyed hash and erases them once more."""
    record_change(client, admin_headers, "bob@example.com", "subscribed", topic="newsletter")
    with database.transaction(write=True) as session:
        session.add(
            Contact(
                public_id="stored-again-0001",
                address=ERASED,
                address_display=VARIANTS[0],
                created_at=utcnow(),
            )
        )
    monkeypatch.setenv("PREFCENTER_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PREFCENTER_SIGNING_KEYS", TEST_SIGNING_KEYS)
    monkeypatch.setenv("PREFCENTER_AUDIT_KEY", TEST_AUDIT_KEY)

    dry = CliRunner().invoke(cli, ["contacts", "re-erase", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.split() == ["stored-again-0001"]
    with database.transaction(write=False) as session:
        assert session.exec(select(Contact).where(Contact.address == ERASED)).first()

    done = CliRunner().invoke(cli, ["contacts", "re-erase"])

    assert done.exit_code == 0, done.output
    assert done.stdout.split() == ["stored-again-0001"]
    assert_stored_nowhere_but(database, "bob@example.com")
    again = CliRunner().invoke(cli, ["contacts", "re-erase"])
    assert again.stdout.split() == []
    erasures = [e for e in audit_events(database) if e.kind == "erasure"]
    assert [e.contact_id for e in erasures][-1] == "stored-again-0001"
    assert erasures[-1].actor.startswith("cli:")
