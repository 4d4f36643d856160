"""Signing in under the throttle, on a clock the test moves: growing delays and never a lock, a
device that signed in before kept out of others' failures, IPv6 counted by /64, and parallel
guesses that cannot all pass one count."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

from sqlmodel import select

from prefcenter.admin import rules
from prefcenter.admin.devices import Device
from prefcenter.admin.models import AdminSignInAttempt
from prefcenter.admin.sign_in import (
    SignInOutcome,
    SignInResult,
    sign_in_with_api_key,
    sign_in_with_password,
)
from prefcenter.apikeys.schemas import Scope
from prefcenter.db import Database
from tests.admin.console import PASSWORD, create_user
from tests.support.factories import count_rows
from tests.support.harness import issue_key

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
ATTACKER = "198.51.100.66"
OFFICE = "203.0.113.10"
WRONG = "not the password"
FREE = rules.FREE_FAILURES[rules.ThrottleScope.CLIENT]


def try_password(
    database: Database,
    *,
    at: datetime,
    password: str = PASSWORD,
    client_ip: str | None = OFFICE,
    username: str = "desk",
    device: Device | None = None,
) -> SignInResult:
    with database.transaction(write=True) as session:
        return sign_in_with_password(
            session,
            username=username,
            password=password,
            client_ip=client_ip,
            device=device,
            now=at,
        )


def fail(
    database: Database,
    times: int,
    *,
    at: datetime,
    client_ip: str = OFFICE,
    username: str = "desk",
    device: Device | None = None,
) -> None:
    for _ in range(times):
        result = try_password(
            database,
            at=at,
            password=WRONG,
            client_ip=client_ip,
            username=username,
            device=device,
        )
        assert result.outcome is SignInOutcome.REFUSED, result


def spread_failures(database: Database, count: int, *, at: datetime) -> None:
    """Failures for `desk` from `count` networks, as a botnet would leave them: past the
    throttle's free failures, so recorded straight into the table."""
    with database.transaction(write=True) as session:
        for network in range(count):
            session.add(
                AdminSignInAttempt(username="desk", network=f"net{network}", attempted_at=at)
            )


def device_of(database: Database, *, at: datetime, client_ip: str = OFFICE) -> Device:
    """Sign in once, as the admin's browser does, and keep the device it was given."""
    result = try_password(database, at=at, client_ip=client_ip)
    assert result.outcome is SignInOutcome.SIGNED_IN, result
    assert result.device is not None
    return result.device


def attempts(database: Database) -> list[AdminSignInAttempt]:
    with database.transaction(write=False) as session:
        return list(session.exec(select(AdminSignInAttempt)))


class TestGrowingDelay:
    def test_the_right_password_waits_a_growing_bounded_delay_then_signs_in(
        self, database: Database
    ) -> None:
        create_user(database, "desk")
        fail(database, FREE, at=T0, client_ip=OFFICE)

        first = try_password(database, at=T0 + timedelta(seconds=1))
        assert first.outcome is SignInOutcome.THROTTLED
        assert first.wait == timedelta(seconds=59)

        # One more wrong guess once the wait is over doubles the next wait.
        fail(database, 1, at=T0 + timedelta(minutes=1), client_ip=OFFICE)
        second = try_password(database, at=T0 + timedelta(minutes=1, seconds=1))
        assert second.outcome is SignInOutcome.THROTTLED
        assert second.wait == timedelta(minutes=2, seconds=-1)

        after = try_password(database, at=T0 + timedelta(minutes=3))
        assert after.outcome is SignInOutcome.SIGNED_IN
        assert after.token is not None

    def test_however_many_failures_the_wait_is_at_most_the_cap(self, database: Database) -> None:
        create_user(database, "desk")
        spread_failures(database, 200, at=T0)

        at_once = try_password(database, at=T0)
        assert at_once.outcome is SignInOutcome.THROTTLED
        assert at_once.wait == rules.MAX_DELAY
        later = try_password(database, at=T0 + rules.MAX_DELAY)
        assert later.outcome is SignInOutcome.SIGNED_IN

    def test_tries_during_a_wait_are_neither_checked_nor_counted(self, database: Database) -> None:
        """Otherwise hammering during the wait would stretch it forever: the old lockout."""
        create_user(database, "desk")
        fail(database, FREE, at=T0, client_ip=OFFICE)

        for second in range(1, 30):
            result = try_password(database, at=T0 + timedelta(seconds=second), password=WRONG)
            assert result.outcome is SignInOutcome.THROTTLED

        assert len(attempts(database)) == FREE
        assert try_password(database, at=T0 + timedelta(minutes=1)).outcome is (
            SignInOutcome.SIGNED_IN
        )

    def test_failures_older_than_the_window_are_forgotten_and_deleted(
        self, database: Database
    ) -> None:
        create_user(database, "desk")
        fail(database, FREE, at=T0, client_ip=OFFICE)
        later = T0 + rules.ATTEMPT_WINDOW + timedelta(seconds=1)

        fail(database, 1, at=later, client_ip=OFFICE)

        assert [a.attempted_at for a in attempts(database)] == [later]
        assert try_password(database, at=later).outcome is SignInOutcome.SIGNED_IN


class TestScopes:
    def test_an_attackers_failures_do_not_hold_up_other_networks(self, database: Database) -> None:
        create_user(database, "desk")
        fail(database, FREE, at=T0, client_ip=ATTACKER)

        assert try_password(database, at=T0, client_ip=ATTACKER).outcome is (
            SignInOutcome.THROTTLED
        )
        assert try_password(database, at=T0, client_ip=OFFICE).outcome is (SignInOutcome.SIGNED_IN)

    def test_guessing_spread_over_networks_delays_the_username(self, database: Database) -> None:
        create_user(database, "desk")
        free = rules.FREE_FAILURES[rules.ThrottleScope.USERNAME]
        for network in range(free):
            fail(database, 1, at=T0, client_ip=f"192.0.2.{network}")

        result = try_password(database, at=T0 + timedelta(seconds=10), client_ip=OFFICE)

        assert result.outcome is SignInOutcome.THROTTLED
        assert result.wait == rules.FIRST_DELAY - timedelta(seconds=10)

    def test_one_network_spraying_many_usernames_is_delayed(self, database: Database) -> None:
        create_user(database, "desk")
        for n in range(rules.FREE_FAILURES[rules.ThrottleScope.NETWORK]):
            fail(database, 1, at=T0, client_ip=ATTACKER, username=f"guess{n}")

        assert try_password(database, at=T0, client_ip=ATTACKER).outcome is (
            SignInOutcome.THROTTLED
        )
        assert try_password(database, at=T0, client_ip=OFFICE).outcome is (SignInOutcome.SIGNED_IN)

    def test_ipv6_addresses_of_one_64_share_a_count(self, database: Database) -> None:
        create_user(database, "desk")
        for host in range(FREE):
            fail(database, 1, at=T0, client_ip=f"2001:db8:aa:1::{host + 1:x}")

        same_64 = try_password(database, at=T0, client_ip="2001:db8:aa:1:ffff:ffff:ffff:ffff")
        next_64 = try_password(database, at=T0, client_ip="2001:db8:aa:2::1")

        assert same_64.outcome is SignInOutcome.THROTTLED
        assert next_64.outcome is SignInOutcome.SIGNED_IN
        assert {a.network for a in attempts(database)} == {"2001:db8:aa:1::/64"}

    def test_api_keys_are_throttled_by_network(self, database: Database) -> None:
        secret = issue_key(database, Scope.ADMIN)["Authorization"].removeprefix("Bearer ")
        free = rules.FREE_FAILURES[rules.ThrottleScope.NETWORK]

        def try_key(key: str, client_ip: str) -> SignInOutcome:
            with database.transaction(write=True) as session:
                return sign_in_with_api_key(
                    session, secret=key, client_ip=client_ip, now=T0
                ).outcome

        assert [try_key("pck_guess", ATTACKER) for _ in range(free)] == (
            [SignInOutcome.REFUSED] * free
        )
        assert try_key(secret, ATTACKER) is SignInOutcome.THROTTLED
        assert try_key(secret, OFFICE) is SignInOutcome.SIGNED_IN


class TestKnownDevice:
    def test_the_admins_device_signs_in_whatever_others_failed(self, database: Database) -> None:
        create_user(database, "desk")
        device = device_of(database, at=T0)
        later = T0 + timedelta(hours=1)
        # The attacker shares the admin's office network, and guesses from many others too.
        fail(database, FREE, at=later, client_ip=OFFICE)
        spread_failures(database, 200, at=later)
        assert try_password(database, at=later, client_ip=OFFICE).outcome is (
            SignInOutcome.THROTTLED
        )

        result = try_password(database, at=later, client_ip=OFFICE, device=device)

        assert result.outcome is SignInOutcome.SIGNED_IN
        assert result.device == device  # the same device, its cookie issued afresh

    def test_a_device_is_held_up_by_its_own_failures_only(self, database: Database) -> None:
        create_user(database, "desk")
        device = device_of(database, at=T0)
        fail(database, FREE, at=T0, client_ip=OFFICE, device=device)

        own = try_password(database, at=T0 + timedelta(seconds=1), device=device)
        assert own.outcome is SignInOutcome.THROTTLED
        assert own.wait == timedelta(seconds=59)
        # Its failures count against nobody else, not even its own network.
        assert try_password(database, at=T0, client_ip=OFFICE).outcome is (SignInOutcome.SIGNED_IN)
        assert {a.device_id for a in attempts(database)} == {device.device_id}

        assert try_password(database, at=T0 + timedelta(minutes=1), device=device).outcome is (
            SignInOutcome.SIGNED_IN
        )
        assert attempts(database) == []  # forgiven once it has shown the password again

    def test_another_users_device_earns_nothing(self, database: Database) -> None:
        create_user(database, "desk")
        create_user(database, "other")
        others = Device(username="other", device_id=device_of(database, at=T0).device_id)
        fail(database, FREE, at=T0, client_ip=OFFICE)

        result = try_password(database, at=T0, client_ip=OFFICE, device=others)

        assert result.outcome is SignInOutcome.THROTTLED

    def test_a_new_client_gets_a_new_device(self, database: Database) -> None:
        create_user(database, "desk")

        first, second = device_of(database, at=T0), device_of(database, at=T0)

        assert first.username == second.username == "desk"
        assert first.device_id != second.device_id


def test_parallel_wrong_guesses_cannot_all_pass_one_count(database: Database) -> None:
    """The review's finding: on PostgreSQL, 12 parallel wrong guesses all got checked, since
    each counted before any had recorded its failure. Each guess here is its own transaction
    in its own thread, released at once; only the free failures may be checked."""
    create_user(database, "desk")
    guesses = 12
    start = threading.Barrier(guesses)
    outcomes: list[SignInOutcome] = []
    errors: list[BaseException] = []

    def guess() -> None:
        try:
            start.wait()
            outcomes.append(try_password(database, at=T0, password=WRONG).outcome)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guess) for _ in range(guesses)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert Counter(outcomes) == {
        SignInOutcome.REFUSED: FREE,
        SignInOutcome.THROTTLED: guesses - FREE,
    }
    # Each checked guess is one recorded failure: exactly as many as were allowed.
    assert count_rows(database, AdminSignInAttempt) == FREE
