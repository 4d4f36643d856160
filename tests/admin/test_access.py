"""Signing in to the console and staying signed in: passwords, admin API keys, the throttle and
the device cookie that keeps an admin's browser out of others' failures, the session cookie,
sign-out, expiry, and that every page needs a session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlmodel import select

from prefcenter.admin import rules
from prefcenter.admin.access import DEVICE_COOKIE
from prefcenter.admin.models import AdminSession, AdminSignInAttempt
from prefcenter.admin.users import disable_admin
from prefcenter.apikeys.schemas import Scope
from prefcenter.app import create_app
from prefcenter.db import Database, utcnow
from prefcenter.settings import Settings
from tests.admin.console import (
    PASSWORD,
    create_user,
    page_token,
    sessions,
    sign_in,
    sign_in_with_key,
)
from tests.support.factories import Headers, count_rows, revoke_key
from tests.support.harness import issue_key, make_settings

PAGES = [
    "/admin",
    "/admin/contacts",
    "/admin/contacts/abc",
    "/admin/contacts/abc/erase",
    "/admin/audit",
    "/admin/verify",
    "/admin/exports",
    "/admin/exports/suppressions.csv",
    "/admin/exports/audience/newsletter.csv",
    "/admin/exports/audit.csv",
]
FORMS = [
    "/admin/sign-out",
    "/admin/contacts",
    "/admin/contacts/abc/changes",
    "/admin/contacts/abc/erase",
    "/admin/verify",
]


FREE = rules.FREE_FAILURES[rules.ThrottleScope.CLIENT]


def session_cookie(response_headers: list[str]) -> str:
    (cookie,) = [h for h in response_headers if h.startswith("prefcenter_admin=")]
    return cookie


def device_cookie_header(response_headers: list[str]) -> str:
    (cookie,) = [h for h in response_headers if h.startswith(f"{DEVICE_COOKIE}=")]
    return cookie


def cookie_attributes(cookie: str) -> set[str]:
    return {part.strip().lower() for part in cookie.split(";")[1:]}


class TestSignInWithPassword:
    def test_right_password_opens_a_session(self, client: TestClient, database: Database) -> None:
        create_user(database, "desk")

        answer = sign_in(client, username="Desk", password=PASSWORD)

        assert answer.status_code == 303
        assert answer.headers["location"] == "/admin"
        cookie = session_cookie(answer.headers.get_list("set-cookie"))
        attributes = cookie_attributes(cookie)
        assert {"httponly", "samesite=strict", "path=/admin"} <= attributes
        assert "secure" not in attributes  # served over plain http here
        assert not any(a.startswith(("max-age", "expires")) for a in attributes)
        page = client.get("/admin")
        assert page.status_code == 200
        assert "Signed in as <strong>desk</strong>" in page.text
        (row,) = sessions(database)
        assert row.actor == "admin:desk"
        # Only a hash of the cookie's token is kept.
        token = cookie.split(";")[0].split("=", 1)[1]
        assert token not in row.id
        assert len(row.id) == 64

    def test_wrong_password_is_refused_and_counted(
        self, client: TestClient, database: Database
    ) -> None:
        create_user(database, "desk")

        answer = sign_in(client, username="desk", password="not the password")

        assert answer.status_code == 401
        assert "Sign-in failed" in answer.text
        assert not [h for h in answer.headers.get_list("set-cookie") if "prefcenter_admin=" in h]
        assert client.get("/admin", follow_redirects=False).status_code == 303
        assert sessions(database) == []
        with database.transaction(write=False) as session:
            (attempt,) = session.exec(select(AdminSignInAttempt)).all()
        assert attempt.username == "desk"

    def test_unknown_user_is_refused_like_a_wrong_password(
        self, client: TestClient, database: Database
    ) -> None:
        answer = sign_in(client, username="nobody", password=PASSWORD)

        assert answer.status_code == 401
        assert sessions(database) == []

    def test_a_username_that_cannot_exist_is_refused(
        self, client: TestClient, database: Database
    ) -> None:
        answer = sign_in(client, username="desk\x00<script>", password=PASSWORD)

        assert answer.status_code == 401
        with database.transaction(write=False) as session:
            (attempt,) = session.exec(select(AdminSignInAttempt)).all()
        assert attempt.username is None  # counted against the address only

    def test_disabled_user_cannot_sign_in(self, client: TestClient, database: Database) -> None:
        create_user(database, "desk")
        with database.transaction(write=True) as session:
            disable_admin(session, username="desk")

        assert sign_in(client, username="desk", password=PASSWORD).status_code == 401

    def test_throttled_after_five_failures_even_with_the_right_password(
        self, client: TestClient, database: Database
    ) -> None:
        create_user(database, "desk")
        for _ in range(FREE):
            assert sign_in(client, username="desk", password="wrong guess").status_code == 401

        answer = sign_in(client, username="desk", password=PASSWORD)

        assert answer.status_code == 429
        # A minute from the last failure, less what this test took since: never the old lock.
        assert 0 < int(answer.headers["retry-after"]) <= 60
        assert "Too many failed sign-ins" in answer.text
        assert "try again in" in answer.text
        assert sessions(database) == []
        assert count_rows(database, AdminSignInAttempt) == FREE  # the 429 was not counted
        # Another user is not locked out by failures that were not theirs.
        create_user(database, "other")
        assert sign_in(client, username="other", password=PASSWORD).status_code == 303

    def test_failures_older_than_the_window_no_longer_count(
        self, client: TestClient, database: Database
    ) -> None:
        create_user(database, "desk")
        long_ago = utcnow() - rules.ATTEMPT_WINDOW - timedelta(seconds=1)
        with database.transaction(write=True) as session:
            for _ in range(rules.FREE_FAILURES[rules.ThrottleScope.NETWORK]):
                session.add(
                    AdminSignInAttempt(username="desk", network="testclient", attempted_at=long_ago)
                )

        assert sign_in(client, username="desk", password=PASSWORD).status_code == 303


class TestSignInWithApiKey:
    def test_an_admin_key_opens_a_session_named_after_it(
        self, client: TestClient, database: Database, admin_headers: Headers
    ) -> None:
        sign_in_with_key(client, admin_headers)

        (row,) = sessions(database)
        assert row.actor.startswith("api_key:")
        assert row.actor.endswith(":admin")
        assert "Signed in as <strong>API key admin</strong>" in client.get("/admin").text

    def test_a_key_without_the_admin_scope_is_refused(
        self, client: TestClient, database: Database, writer_headers: Headers
    ) -> None:
        answer = sign_in(client, api_key=writer_headers["Authorization"].removeprefix("Bearer "))

        assert answer.status_code == 401
        assert sessions(database) == []

    def test_revoking_the_key_ends_its_sessions(
        self, client: TestClient, database: Database, admin_headers: Headers
    ) -> None:
        sign_in_with_key(client, admin_headers)
        revoke_key(database, admin_headers)

        assert client.get("/admin", follow_redirects=False).status_code == 303

    def test_too_many_bad_keys_from_one_address_are_throttled(
        self, client: TestClient, database: Database, admin_headers: Headers
    ) -> None:
        for _ in range(rules.FREE_FAILURES[rules.ThrottleScope.NETWORK]):
            assert sign_in(client, api_key="pck_guess").status_code == 401

        answer = sign_in(client, api_key=admin_headers["Authorization"].removeprefix("Bearer "))

        assert answer.status_code == 429
        assert sessions(database) == []


ClientAt = Callable[[str], TestClient]


@pytest.fixture
def client_at(settings: Settings) -> Iterator[ClientAt]:
    """Browsers of their own (no cookies) at the client address given."""
    opened: list[TestClient] = []

    def open_client(address: str) -> TestClient:
        browser = TestClient(create_app(settings), client=(address, 50000))
        opened.append(browser.__enter__())
        return browser

    yield open_client
    for browser in opened:
        browser.__exit__(None, None, None)


class TestDeviceCookie:
    def test_a_password_sign_in_marks_the_browser_as_a_known_device(
        self, client: TestClient, database: Database
    ) -> None:
        create_user(database, "desk")

        answer = sign_in(client, username="desk", password=PASSWORD)

        assert answer.status_code == 303
        attributes = cookie_attributes(device_cookie_header(answer.headers.get_list("set-cookie")))
        assert {"httponly", "samesite=strict", "path=/admin/sign-in"} <= attributes
        assert "max-age=31536000" in attributes
        assert "secure" not in attributes  # served over plain http here
        assert client.cookies.get(DEVICE_COOKIE, path="/admin/sign-in")

    def test_an_api_key_sign_in_marks_no_device(
        self, client: TestClient, admin_headers: Headers
    ) -> None:
        answer = sign_in(client, api_key=admin_headers["Authorization"].removeprefix("Bearer "))

        assert answer.status_code == 303
        assert not [h for h in answer.headers.get_list("set-cookie") if DEVICE_COOKIE in h]

    def test_the_admins_device_signs_in_after_an_attackers_failures(
        self, client: TestClient, database: Database, client_at: ClientAt
    ) -> None:
        """The review's lockout: five wrong passwords from the attacker, and the admin could
        not sign in. The attacker here even shares the admin's network (an office NAT)."""
        create_user(database, "desk")
        assert sign_in(client, username="desk", password=PASSWORD).status_code == 303
        attacker = client_at("testclient")
        for _ in range(FREE):
            assert sign_in(attacker, username="desk", password="guess").status_code == 401
        assert sign_in(attacker, username="desk", password=PASSWORD).status_code == 429
        new_browser = client_at("testclient")
        assert sign_in(new_browser, username="desk", password=PASSWORD).status_code == 429

        answer = sign_in(client, username="desk", password=PASSWORD)

        assert answer.status_code == 303
        assert "Signed in as <strong>desk</strong>" in client.get("/admin").text

    @pytest.mark.parametrize(
        "tamper",
        [
            pytest.param(lambda v: v[:-2] + ("AA" if not v.endswith("AA") else "BB"), id="tag"),
            pytest.param(lambda v: v.replace(":desk:", ":desl:"), id="username"),
            pytest.param(
                lambda v: v.split(":", 1)[0] + ":" + "A" * 22 + ":" + v.split(":", 2)[2],
                id="device-id",
            ),
            pytest.param(lambda v: "t1:" + "A" * 22 + ":1800000000:desk:" + "A" * 43, id="forged"),
        ],
    )
    def test_a_tampered_or_forged_device_cookie_earns_nothing(
        self,
        client: TestClient,
        database: Database,
        client_at: ClientAt,
        tamper: Callable[[str], str],
    ) -> None:
        create_user(database, "desk")
        assert sign_in(client, username="desk", password=PASSWORD).status_code == 303
        value = client.cookies.get(DEVICE_COOKIE, path="/admin/sign-in")
        assert value
        attacker = client_at("testclient")
        for _ in range(FREE):
            assert sign_in(attacker, username="desk", password="guess").status_code == 401
        client.cookies.delete(DEVICE_COOKIE, path="/admin/sign-in")
        client.cookies.set(DEVICE_COOKIE, tamper(value), path="/admin/sign-in")

        answer = sign_in(client, username="desk", password=PASSWORD)

        assert answer.status_code == 429
        assert len(sessions(database)) == 1  # only the first sign-in's

    def test_ipv6_clients_of_one_64_share_a_count(
        self, database: Database, client_at: ClientAt
    ) -> None:
        create_user(database, "desk")
        for host in range(FREE):
            guesser = client_at(f"2001:db8:5:6::{host + 1:x}")
            assert sign_in(guesser, username="desk", password="guess").status_code == 401

        same_64 = sign_in(client_at("2001:db8:5:6:a:b:c:d"), username="desk", password=PASSWORD)
        other_64 = sign_in(client_at("2001:db8:5:7::1"), username="desk", password=PASSWORD)

        assert same_64.status_code == 429
        assert other_64.status_code == 303


class TestSignInForm:
    def test_a_post_without_the_form_token_is_refused(
        self, client: TestClient, database: Database, admin_headers: Headers
    ) -> None:
        client.get("/admin/sign-in")
        secret = admin_headers["Authorization"].removeprefix("Bearer ")

        answer = client.post(
            "/admin/sign-in", data={"method": "api_key", "api_key": secret}, follow_redirects=False
        )

        assert answer.status_code == 403
        assert sessions(database) == []

    def test_a_token_without_its_cookie_is_refused(
        self, client: TestClient, database: Database, admin_headers: Headers
    ) -> None:
        """What a cross-site form would send: a token, but not the browser's cookie."""
        token = page_token(client, "/admin/sign-in")
        client.cookies.clear()
        secret = admin_headers["Authorization"].removeprefix("Bearer ")

        answer = client.post(
            "/admin/sign-in",
            data={"csrf_token": token, "method": "api_key", "api_key": secret},
            follow_redirects=False,
        )

        assert answer.status_code == 403
        assert sessions(database) == []


@pytest.fixture
def https_client(database_url: str) -> Iterator[TestClient]:
    settings = make_settings(database_url, base_url="https://prefcenter.example")
    with TestClient(create_app(settings), base_url="https://prefcenter.example") as client:
        yield client


def test_the_cookie_is_secure_when_served_over_https(
    https_client: TestClient, database: Database
) -> None:
    headers = issue_key(database, Scope.ADMIN, name="ops")

    answer = sign_in(https_client, api_key=headers["Authorization"].removeprefix("Bearer "))

    assert answer.status_code == 303
    assert "secure" in cookie_attributes(session_cookie(answer.headers.get_list("set-cookie")))


def test_the_device_cookie_is_secure_when_served_over_https(
    https_client: TestClient, database: Database
) -> None:
    create_user(database, "desk")

    answer = sign_in(https_client, username="desk", password=PASSWORD)

    assert answer.status_code == 303
    cookie = device_cookie_header(answer.headers.get_list("set-cookie"))
    assert {"secure", "httponly", "samesite=strict"} <= cookie_attributes(cookie)


class TestSession:
    @pytest.mark.parametrize("path", PAGES)
    def test_every_page_needs_a_session(self, client: TestClient, path: str) -> None:
        answer = client.get(path, follow_redirects=False)

        assert answer.status_code == 303
        assert answer.headers["location"] == "/admin/sign-in"

    @pytest.mark.parametrize("path", FORMS)
    def test_every_form_needs_a_session(self, client: TestClient, path: str) -> None:
        answer = client.post(path, data={"csrf_token": "x"}, follow_redirects=False)

        assert answer.status_code == 303
        assert answer.headers["location"] == "/admin/sign-in"

    def test_a_made_up_cookie_is_no_session(self, client: TestClient) -> None:
        client.cookies.set("prefcenter_admin", "made-up", path="/admin")

        assert client.get("/admin", follow_redirects=False).status_code == 303

    def test_sign_out_ends_the_session_on_the_server(
        self, client: TestClient, database: Database, admin_headers: Headers
    ) -> None:
        sign_in_with_key(client, admin_headers)
        cookie = client.cookies.get("prefcenter_admin")
        assert cookie

        answer = client.post(
            "/admin/sign-out",
            data={"csrf_token": page_token(client, "/admin")},
            follow_redirects=False,
        )

        assert answer.status_code == 303
        assert answer.headers["location"] == "/admin/sign-in"
        assert sessions(database) == []
        # The old cookie, replayed, is worth nothing.
        client.cookies.set("prefcenter_admin", cookie, path="/admin")
        assert client.get("/admin", follow_redirects=False).status_code == 303

    def test_sign_out_needs_the_form_token(
        self, client: TestClient, database: Database, admin_headers: Headers
    ) -> None:
        sign_in_with_key(client, admin_headers)

        answer = client.post("/admin/sign-out", data={"csrf_token": "wrong"})

        assert answer.status_code == 403
        assert len(sessions(database)) == 1

    @pytest.mark.parametrize("column", ["expires_at", "last_seen_at"])
    def test_an_expired_session_is_refused(
        self, client: TestClient, database: Database, admin_headers: Headers, column: str
    ) -> None:
        sign_in_with_key(client, admin_headers)
        assert client.get("/admin", follow_redirects=False).status_code == 200
        past = utcnow() - rules.SESSION_IDLE_TIMEOUT - timedelta(seconds=1)
        with database.transaction(write=True) as session:
            session.execute(update(AdminSession).values({column: past}))

        assert client.get("/admin", follow_redirects=False).status_code == 303

    def test_use_keeps_the_session_alive(
        self, client: TestClient, database: Database, admin_headers: Headers
    ) -> None:
        sign_in_with_key(client, admin_headers)
        a_while_ago = utcnow() - rules.SESSION_IDLE_TIMEOUT + timedelta(minutes=2)
        with database.transaction(write=True) as session:
            session.execute(update(AdminSession).values(last_seen_at=a_while_ago))

        assert client.get("/admin", follow_redirects=False).status_code == 200

        (row,) = sessions(database)
        assert row.last_seen_at > a_while_ago + timedelta(minutes=1)

    def test_disabling_a_user_ends_their_sessions(
        self, client: TestClient, database: Database
    ) -> None:
        create_user(database, "desk")
        assert sign_in(client, username="desk", password=PASSWORD).status_code == 303
        with database.transaction(write=True) as session:
            disable_admin(session, username="desk")

        assert client.get("/admin", follow_redirects=False).status_code == 303
        assert count_rows(database, AdminSession) == 0


class TestHeaders:
    @pytest.mark.parametrize("path", ["/admin", "/admin/sign-in", "/admin/nowhere"])
    def test_every_answer_under_admin_carries_them(self, client: TestClient, path: str) -> None:
        answer = client.get(path, follow_redirects=False)

        csp = answer.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "script-src" not in csp  # no script, not even our own
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["x-frame-options"] == "DENY"

    def test_pages_hold_no_script(self, client: TestClient, admin_headers: Headers) -> None:
        sign_in_with_key(client, admin_headers)
        for path in ("/admin", "/admin/sign-in", "/admin/audit", "/admin/verify", "/admin/exports"):
            assert "<script" not in client.get(path).text.lower()
