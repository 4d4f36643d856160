"""The console's pure rules: session expiry, the sign-in throttle, cookie security, CSRF."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from prefcenter.admin import rules

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class TestSessionAlive:
    def test_a_new_session_is_alive(self) -> None:
        assert rules.session_alive(rules.session_times(NOW), NOW)

    def test_idle_for_the_timeout_ends_it(self) -> None:
        times = rules.session_times(NOW)
        later = NOW + rules.SESSION_IDLE_TIMEOUT

        assert rules.session_alive(times, later - timedelta(seconds=1))
        assert not rules.session_alive(times, later)

    def test_activity_does_not_outlive_the_absolute_end(self) -> None:
        times = rules.session_times(NOW)
        end = NOW + rules.SESSION_MAX_AGE
        active = rules.SessionTimes(times.created_at, times.expires_at, end - timedelta(seconds=1))

        assert rules.session_alive(active, end - timedelta(seconds=1))
        assert not rules.session_alive(active, end)

    def test_last_seen_is_written_at_most_once_a_minute(self) -> None:
        assert not rules.needs_touch(NOW, NOW + timedelta(seconds=59))
        assert rules.needs_touch(NOW, NOW + rules.LAST_SEEN_RESOLUTION)


class TestThrottle:
    @pytest.mark.parametrize(
        ("username", "address", "throttled"),
        [
            (0, 0, False),
            (rules.MAX_FAILURES_PER_USERNAME - 1, rules.MAX_FAILURES_PER_ADDRESS - 1, False),
            (rules.MAX_FAILURES_PER_USERNAME, 0, True),
            (0, rules.MAX_FAILURES_PER_ADDRESS, True),
        ],
    )
    def test_either_count_reaching_its_limit_throttles(
        self, username: int, address: int, throttled: bool
    ) -> None:
        failures = rules.RecentFailures(for_username=username, for_address=address)
        assert rules.sign_in_throttled(failures) is throttled


class TestCookieSecure:
    def test_https_origin(self) -> None:
        assert rules.cookie_secure(
            base_url="https://p.example", scheme="http", forwarded_proto=None
        )

    def test_plain_http(self) -> None:
        assert not rules.cookie_secure(
            base_url="http://127.0.0.1:8000", scheme="http", forwarded_proto=None
        )

    def test_tls_ended_at_a_trusted_proxy(self) -> None:
        assert rules.cookie_secure(
            base_url="http://internal", scheme="http", forwarded_proto="https, http"
        )


class TestCsrf:
    def test_the_same_token_matches(self) -> None:
        assert rules.csrf_matches("abc123", "abc123")

    @pytest.mark.parametrize("given", [None, "", "abc124", "abc1234", "ab€"])
    def test_anything_else_does_not(self, given: str | None) -> None:
        assert not rules.csrf_matches("abc123", given)

    def test_an_empty_secret_matches_nothing(self) -> None:
        assert not rules.csrf_matches("", "")


class TestUsernamesAndPasswords:
    def test_usernames_are_lower_cased(self) -> None:
        assert rules.normalise_username("  Desk.Ada ") == "desk.ada"

    @pytest.mark.parametrize("text", ["", "-ada", "ada smith", "a" * 65, "ad\na", "ädа"])
    def test_impossible_usernames(self, text: str) -> None:
        assert rules.normalise_username(text) is None

    def test_short_password_is_refused(self) -> None:
        assert rules.password_problem("short") is not None
        assert rules.password_problem("long enough passphrase") is None

    def test_control_characters_are_refused(self) -> None:
        assert rules.password_problem("long enough\x00passphrase") is not None
