"""The console's pure rules: session expiry, the sign-in throttle and the networks it counts
by, cookie security, CSRF."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefcenter.admin import rules
from prefcenter.audit.context import client_network

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


FREE = rules.FREE_FAILURES[rules.ThrottleScope.CLIENT]
SCOPES = st.sampled_from(list(rules.ThrottleScope))


def recent(count: int, latest_at: datetime | None = NOW) -> rules.RecentFailures:
    return rules.RecentFailures(count=count, latest_at=latest_at)


class TestFailureDelay:
    def test_the_free_failures_cost_nothing(self) -> None:
        assert rules.failure_delay(FREE - 1, free=FREE) == timedelta(0)

    def test_the_delay_starts_small_and_doubles_up_to_its_cap(self) -> None:
        delays = [rules.failure_delay(FREE + extra, free=FREE) for extra in range(6)]

        assert delays == [
            timedelta(minutes=1),
            timedelta(minutes=2),
            timedelta(minutes=4),
            timedelta(minutes=8),
            rules.MAX_DELAY,
            rules.MAX_DELAY,
        ]
        assert timedelta(minutes=15) == rules.MAX_DELAY

    @given(failures=st.integers(min_value=0, max_value=10**12), scope=SCOPES)
    def test_more_failures_never_wait_less_and_never_past_the_cap(
        self, failures: int, scope: rules.ThrottleScope
    ) -> None:
        free = rules.FREE_FAILURES[scope]
        delay = rules.failure_delay(failures, free=free)

        assert timedelta(0) <= delay <= rules.MAX_DELAY
        assert rules.failure_delay(failures + 1, free=free) >= delay


class TestSignInWait:
    def test_no_failures_no_wait(self) -> None:
        assert rules.sign_in_wait({}, NOW) == timedelta(0)
        assert rules.sign_in_wait({rules.ThrottleScope.CLIENT: recent(0, None)}, NOW) == (
            timedelta(0)
        )

    def test_counted_from_the_latest_failure(self) -> None:
        failures = {rules.ThrottleScope.CLIENT: recent(FREE + 1)}  # waits 2 minutes

        assert rules.sign_in_wait(failures, NOW + timedelta(seconds=30)) == timedelta(seconds=90)
        assert rules.sign_in_wait(failures, NOW + timedelta(minutes=2)) == timedelta(0)

    def test_free_failures_recorded_after_this_tries_now_cost_nothing(self) -> None:
        """A parallel try recorded its failure after this one read the clock (it then waited
        for the scope's lock): below the free failures that is still no wait. Seen as 429s
        among 12 parallel wrong passwords on a loaded machine (tests/test_concurrency.py)."""
        failures = {rules.ThrottleScope.CLIENT: recent(FREE - 1, NOW + timedelta(seconds=1))}

        assert rules.sign_in_wait(failures, NOW) == timedelta(0)

    def test_the_longest_wait_of_any_scope_counts(self) -> None:
        failures = {
            rules.ThrottleScope.CLIENT: recent(FREE),  # 1 minute
            rules.ThrottleScope.NETWORK: recent(
                rules.FREE_FAILURES[rules.ThrottleScope.NETWORK] + 2  # 4 minutes
            ),
            rules.ThrottleScope.USERNAME: recent(0, None),
        }

        assert rules.sign_in_wait(failures, NOW) == timedelta(minutes=4)

    @given(
        counts=st.dictionaries(SCOPES, st.integers(min_value=0, max_value=10**6)),
        ago=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=1)),
    )
    def test_never_a_lock_the_wait_ends_within_the_cap(
        self, counts: dict[rules.ThrottleScope, int], ago: timedelta
    ) -> None:
        """What the review asked: however many failures, a try is at most MAX_DELAY away."""
        failures = {scope: recent(count, NOW - ago) for scope, count in counts.items()}

        wait = rules.sign_in_wait(failures, NOW)

        assert timedelta(0) <= wait <= rules.MAX_DELAY
        assert rules.sign_in_wait(failures, NOW + rules.MAX_DELAY) == timedelta(0)

    @pytest.mark.parametrize(
        ("wait", "seconds"),
        [(timedelta(microseconds=1), 1), (timedelta(seconds=59.2), 60), (rules.MAX_DELAY, 900)],
    )
    def test_retry_after_is_whole_seconds_rounded_up(self, wait: timedelta, seconds: int) -> None:
        assert rules.retry_after_seconds(wait) == seconds


class TestClientNetwork:
    def test_an_ipv4_address_is_its_own_network(self) -> None:
        assert client_network("203.0.113.7") == "203.0.113.7"
        assert client_network("::ffff:203.0.113.7") == "203.0.113.7"

    def test_an_ipv6_address_counts_as_its_64(self) -> None:
        assert client_network("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
        assert client_network("2001:DB8:1:2::ffff%eth0") == "2001:db8:1:2::/64"

    @given(host_bits=st.integers(min_value=0, max_value=2**64 - 1))
    def test_every_address_of_a_64_shares_one_count(self, host_bits: int) -> None:
        address = ipaddress.IPv6Address((0x20010DB8_00010002 << 64) | host_bits)

        assert client_network(str(address)) == "2001:db8:1:2::/64"

    @given(
        prefixes=st.lists(st.integers(1, 2**64 - 1), min_size=2, max_size=2, unique=True),
        hosts=st.lists(st.integers(0, 2**64 - 1), min_size=2, max_size=2),
    )
    def test_addresses_in_different_64s_never_share_one(
        self, prefixes: list[int], hosts: list[int]
    ) -> None:
        first, second = (
            str(ipaddress.IPv6Address(prefix << 64 | host))
            for prefix, host in zip(prefixes, hosts, strict=True)
        )

        assert client_network(first) != client_network(second)

    def test_a_peer_that_is_no_address_is_counted_by_its_name(self) -> None:
        assert client_network("testclient") == "testclient"
        assert client_network("x" * 100) == "x" * rules.MAX_NETWORK_LENGTH
        assert client_network(None) is None


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
