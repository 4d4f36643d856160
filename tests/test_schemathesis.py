"""Property-based API tests: schemathesis drives the service from its own OpenAPI document, on
SQLite and PostgreSQL, with an admin API key, with a key lacking the scopes, and with none.
No 5xx, and every answer conforms to the document: a documented status code, its content type,
its body schema; every error is a problem document."""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, Response
from schemathesis.checks import CheckFunction
from schemathesis.config import SchemathesisConfig
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance
from starlette.types import Receive, Scope, Send

from prefcenter.apikeys.schemas import Caller
from prefcenter.apikeys.schemas import Scope as ApiScope
from prefcenter.app import create_app
from prefcenter.audit.queries import InvalidTimeRange
from prefcenter.consent.errors import ReasonRequired
from prefcenter.contacts.addresses import InvalidAddress, parse_address
from prefcenter.cursors import InvalidCursor
from prefcenter.db import Database, utcnow
from prefcenter.idempotency import IdempotencyKeyReused
from prefcenter.imports.errors import UnreadableImport
from prefcenter.notices.errors import (
    NoticePeriodTooShort,
    NoticeVersionSuperseded,
    TextDigestMismatch,
    UnknownNoticeVersion,
)
from prefcenter.problems import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_PREFIX
from prefcenter.settings import Settings
from prefcenter.topics.errors import InvalidSharingTopic, UnknownNotice, UnknownTopic
from prefcenter.topics.schemas import ConsentModel, TopicIn, TopicKind
from prefcenter.topics.service import put_topic
from prefcenter.webhooks.errors import WebhookUrlRefused
from tests.support.harness import issue_key, make_settings

# Generic over the spec's operation type; any OpenAPI operation here.
OperationCase = Case[Any]
SEED = 20251125
SEEDED_TOPICS = {
    "newsletter": TopicIn(name="Newsletter", kind=TopicKind.MARKETING, consent=ConsentModel.OPT_IN),
    "offers": TopicIn(
        name="Offers", kind=TopicKind.MARKETING, consent=ConsentModel.OPT_OUT, double_opt_in=True
    ),
    "receipts": TopicIn(
        name="Receipts", kind=TopicKind.TRANSACTIONAL, consent=ConsentModel.OPT_OUT
    ),
}
# One contact under several spellings (case, Unicode domain): later calls find what earlier
# calls stored, and lookups match across forms.
KNOWN_ADDRESSES = ["ada@example.com", "Ada@EXAMPLE.com", "grace@bücher.example", "zoë@example.org"]


def _is_accepted_address(text: str) -> bool:
    try:
        parse_address(text)
    except InvalidAddress:
        return False
    return True


# `format: idn-email` admits what no one receives mail at (`.test`, `.invalid`, quoted local
# parts), which the service refuses by design (422), so valid addresses are drawn from what it
# accepts. Built from an alphabet as schemathesis' own strategy is: `st.emails()` makes the
# coverage phase ten times slower.
ADDRESSES = st.one_of(
    st.builds(
        "{}@{}.{}".format,
        st.text(
            alphabet=string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~",
            min_size=1,
            max_size=20,
        ),
        st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=8),
        st.sampled_from(["com", "org", "example", "de", "xn--p1ai"]),
    ),
    st.sampled_from(KNOWN_ADDRESSES),
).filter(_is_accepted_address)
schemathesis.openapi.format("idn-email", ADDRESSES)


def _config(*, max_examples: int, coverage: bool) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "generation": {"mode": "all", "max-examples": max_examples, "deterministic": True},
            # Coverage: boundary values, missing fields, wrong types, unexpected methods.
            "phases": {"coverage": {"enabled": coverage}},
            # Random topic keys never exist; half the time use one that does.
            "dictionaries": {"topics": {"values": [*SEEDED_TOPICS, "no-such-topic"]}},
            "parameters": {
                "body.topic": {"dictionary": "topics", "probability": 0.5},
                "path.key": {"dictionary": "topics", "probability": 0.5},
            },
            "operations": [
                {
                    # Tokens are opaque: beyond a few, random ones all reach the bad-link page.
                    "include-path-regex": "^/[upc]/",
                    "generation": {"max-examples": min(max_examples, 15)},
                },
                {
                    # Their negative cases the seed draws are an unknown, empty-named query
                    # parameter (`?=0`) with the key left out, which the harness adds back:
                    # every route ignores unknown query parameters, by design (cache busters,
                    # tracking suffixes), so that answer is a 200, not a bug. Which operations
                    # draw it moves with any change to the schema.
                    "include-path-regex": "^/v1/(audit|changes)",
                    "include-method": "GET",
                    "checks": {"negative_data_rejection": {"enabled": False}},
                },
                {
                    # GET /v1/contacts/{contact_id} serves this URL too (contact "lookup": a
                    # 404), so `Allow: GET, POST` is the truth; the check reads the methods
                    # of this path template alone.
                    "include-name": "POST /v1/contacts/lookup",
                    "checks": {"allow_header_conformance": {"enabled": False}},
                },
            ],
        }
    )


class AppUnderTest:
    """The ASGI app schemathesis calls. The schema is loaded at collection time, before any
    test database exists; each test points this at its own app (and so its engine)."""

    def __init__(self) -> None:
        self.app: FastAPI | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            # Returning without reading a message tells the server there is no lifespan: the
            # `api` fixture builds and disposes each app's database itself.
            return
        assert self.app is not None, "the `api` fixture sets the app under test"
        await self.app(scope, receive, send)


APP_UNDER_TEST = AppUnderTest()
# The document does not depend on the database: an app whose engine never connects (engines
# connect lazily) builds it at collection time.
OPENAPI = create_app(make_settings("postgresql+psycopg://openapi@127.0.0.1:1/unused")).openapi()


@schemathesis.serializer("message/rfc822")
def _raw_message(_: Any, value: Any) -> bytes:
    """`POST /v1/inbound/email` takes a raw message: the generated text as its bytes."""
    return str(value).encode("utf-8", "surrogatepass")


def _schema(config: SchemathesisConfig) -> BaseSchema:
    loaded = schemathesis.openapi.from_dict(OPENAPI, config=config)
    loaded.app = APP_UNDER_TEST
    return loaded


# Every operation, on both engines (a generated value that reaches the database can fail on one
# engine alone, e.g. a NUL byte on PostgreSQL): the coverage phase's boundary values, missing
# fields and wrong types, then 15 random cases. The seed is fixed, so the random cases are the
# same ones every run: 30 of them were about half of this test's time (the suite's heaviest
# file), for the same inputs each time; the systematic coverage phase is kept whole.
authenticated = _schema(_config(max_examples=15, coverage=True))
# Only `/v1` takes keys: recipient pages and health answer everyone alike. The ESPs' routes
# take their senders' signatures instead (tests/inbound).
unauthenticated = (
    _schema(_config(max_examples=10, coverage=False))
    .exclude(path_regex="^/(?!v1/)")
    .exclude(path_regex="^/v1/inbound/(ses|sendgrid|mailgun|postmark)$")
)

HYPOTHESIS_SETTINGS = hypothesis.settings(
    deadline=None,
    database=None,
    # One database per test, shared by its examples, is the point; the address strategy's
    # filter rejects little.
    suppress_health_check=[
        hypothesis.HealthCheck.function_scoped_fixture,
        hypothesis.HealthCheck.too_slow,
        hypothesis.HealthCheck.filter_too_much,
    ],
)


@dataclass(frozen=True)
class IssuedTokens:
    """Tokens the service signed: random ones only ever reach the "bad link" page."""

    unsubscribe: list[str]  # for /u
    manage: list[str]  # for /p
    confirm: list[str]  # for /c

    def for_path(self, path: str) -> list[str]:
        by_page = {"/u/": self.unsubscribe, "/p/": self.manage, "/c/": self.confirm}
        return by_page[path[:3]]


def _token(url: str) -> str:
    return url.rsplit("/", 1)[1]


def issue_tokens(app: FastAPI, admin: dict[str, str]) -> IssuedTokens:
    client = TestClient(app)
    unsubscribe, manage = [], []
    for link in (
        {"email": KNOWN_ADDRESSES[0]},
        {"email": KNOWN_ADDRESSES[0], "topic": "newsletter"},
    ):
        issued = client.post("/v1/links", json=link, headers=admin)
        assert issued.status_code == 200, issued.text
        unsubscribe.append(_token(issued.json()["unsubscribe_url"]))
        manage.append(_token(issued.json()["preferences_url"]))
    change = {"email": KNOWN_ADDRESSES[2], "topic": "offers", "status": "subscribed"}
    pending = client.post("/v1/consents", json=change, headers=admin)
    assert pending.status_code == 200, pending.text
    return IssuedTokens(
        unsubscribe=unsubscribe, manage=manage, confirm=[_token(pending.json()["confirm_url"])]
    )


# Schema-valid requests that stored state refuses: an unknown topic, an admin reversal of a
# recipient's opt-out without a reason, an Idempotency-Key reused with another body, and an
# opaque change-feed cursor the service never handed out (no schema can say which are).
STATE_DEPENDENT_422 = {
    PROBLEM_TYPE_PREFIX + problem.slug
    for problem in (
        UnknownTopic,
        ReasonRequired,
        IdempotencyKeyReused,
        InvalidCursor,
        InvalidTimeRange,  # since >= until: across two parameters, which no schema can say
        UnreadableImport,  # what a CSV file holds: no schema says it
        WebhookUrlRefused,  # where a URL's host resolves: DNS, not a schema, says it
        UnknownNoticeVersion,  # a consent's notice: which versions are published
        NoticeVersionSuperseded,  # …and which took effect by its occurred_at
        NoticePeriodTooShort,  # an effective_at against the clock
        TextDigestMismatch,  # what a text hashes to
        InvalidSharingTopic,  # kind, consent and third_party together: across fields
        UnknownNotice,  # a topic's notice: which notices exist
    )
}


# Batches whose items are each validated on their own (by the contract): an invalid item gets
# its problem document in its slot and the batch answers 200, which schemathesis' "invalid
# data must be rejected" would call a failure.
ITEMS_ANSWERED_IN_THEIR_SLOTS = frozenset({"/v1/consents/batch"})


def positive_data_accepted(_: CheckContext, response: Response, case: OperationCase) -> bool | None:
    """schemathesis' `positive_data_acceptance`, except for refusals that depend on what no
    schema can express: stored state (a 422 of these problem types) or a link's signature."""
    assert case.meta is not None
    if not case.meta.generation.mode.is_positive or response.status_code in (401, 403, 404, 409):
        return None
    if response.status_code == 400 and "token" in (case.path_parameters or {}):
        # A link's signature is not something a schema can say: a token the service did not
        # issue gets the "bad link" page.
        return None
    if response.status_code == 422:
        assert response.json().get("type") in STATE_DEPENDENT_422, (
            f"Schema-valid request refused as invalid: {response.text}"
        )
        return None
    assert 200 <= response.status_code < 300, (
        f"Schema-valid request answered {response.status_code}: {response.text}"
    )
    return None


def call_and_validate(
    case: OperationCase, tokens: IssuedTokens, headers: dict[str, str] | None = None
) -> Response:
    assert case.meta is not None
    issued = None
    token = (case.path_parameters or {}).get("token")
    if case.meta.generation.mode.is_positive and isinstance(token, str) and len(token) % 2:
        # Half the valid requests to a recipient page carry a link the service issued.
        candidates = tokens.for_path(case.path)
        issued = candidates[len(token) % len(candidates)]
        case.path_parameters = {**(case.path_parameters or {}), "token": issued}
    excluded: list[CheckFunction] = [positive_data_acceptance]
    if case.operation.path in ITEMS_ANSWERED_IN_THEIR_SLOTS:
        excluded.append(negative_data_rejection)
    response = case.call_and_validate(
        headers=headers,
        excluded_checks=excluded,
        additional_checks=[positive_data_accepted],
    )
    if issued is not None:
        assert response.status_code == 200, response.text
    documented = str(response.status_code) in case.operation.definition.raw["responses"]
    if response.status_code >= 400 and not documented:
        # A documented status was checked against its documented content type (a page, for
        # recipients); any other error, such as a 405, is a problem document.
        assert response.headers["content-type"] == [PROBLEM_MEDIA_TYPE], response.headers
    return response


@pytest.fixture
def api(settings: Settings, database: Database) -> Iterator[IssuedTokens]:
    """The app under test on this engine, with topics and issued links; its tokens."""
    seed = Caller(key_id=0, name="seed", scopes=frozenset({ApiScope.ADMIN}))
    with database.transaction(write=True) as session:
        for key, spec in SEEDED_TOPICS.items():
            put_topic(session, key, spec, caller=seed, now=utcnow())
    app = create_app(settings)
    tokens = issue_tokens(app, issue_key(database, ApiScope.ADMIN, name="seed"))
    APP_UNDER_TEST.app = app
    yield tokens
    APP_UNDER_TEST.app = None
    app.state.database.dispose()


@pytest.fixture
def links_headers(database: Database) -> dict[str, str]:
    return issue_key(database, ApiScope.LINKS, name="links-only")


def test_served_document_is_the_tested_one(client: TestClient) -> None:
    assert client.get("/openapi.json").json() == OPENAPI


@authenticated.parametrize()
@HYPOTHESIS_SETTINGS
def test_api_as_admin(
    case: OperationCase, api: IssuedTokens, admin_headers: dict[str, str]
) -> None:
    call_and_validate(case, api, admin_headers)


# What a key with only the `links` scope may call: any key may read topics.
LINKS_KEY_MAY_CALL = {
    "GET /v1/topics",
    "GET /v1/topics/{key}",
    "POST /v1/links",
    "POST /v1/links/batch",
}


def _forbidden_to_links_key(case: OperationCase) -> bool:
    return f"{case.method} {case.path}" not in LINKS_KEY_MAY_CALL


# The two tests below see the API refuse (401, 403) before any handler runs: a missing key is
# refused without a query, and a key lacking the scope after one lookup by its hash, the same
# statement every other API test runs on both engines. The engine cannot change these answers,
# so they run on SQLite alone (on both, they were a third of this file's time). The four
# operations a links-only key may call do reach the database: test_api_as_admin fuzzes those,
# with every other operation, on both engines.
REFUSALS_ON_ONE_ENGINE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@unauthenticated.parametrize()
@REFUSALS_ON_ONE_ENGINE
@HYPOTHESIS_SETTINGS
def test_api_without_key(case: OperationCase, api: IssuedTokens) -> None:
    response = call_and_validate(case, api)
    assert case.meta is not None
    assert not 200 <= response.status_code < 300, response.text
    if case.meta.generation.mode.is_positive:
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == ['Bearer realm="prefcenter"']


@unauthenticated.parametrize()
@REFUSALS_ON_ONE_ENGINE
@HYPOTHESIS_SETTINGS
def test_api_with_key_lacking_scopes(
    case: OperationCase, api: IssuedTokens, links_headers: dict[str, str]
) -> None:
    response = call_and_validate(case, api, links_headers)
    assert case.meta is not None
    if _forbidden_to_links_key(case):
        assert not 200 <= response.status_code < 300, response.text
        if case.meta.generation.mode.is_positive:
            assert response.status_code == 403, response.text
            body: dict[str, Any] = response.json()
            assert body["type"] == PROBLEM_TYPE_PREFIX + "forbidden"
