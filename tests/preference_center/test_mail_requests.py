"""The throttle on mail that recipient pages send on request, on both engines."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from prefcenter.db import Database
from prefcenter.preference_center.mail_requests import (
    PER_ADDRESS,
    PER_NETWORK,
    WINDOW,
    Throttled,
    allow_mail_request,
)
from prefcenter.preference_center.models import MailRequest
from tests.support.factories import count_rows

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def ask(
    database: Database, address_hash: str, client_ip: str | None, now: datetime = NOW
) -> Throttled | None:
    with database.transaction(write=True) as session:
        return allow_mail_request(session, address_hash=address_hash, client_ip=client_ip, now=now)


class TestPerAddress:
    def test_an_address_is_mailed_a_few_times_an_hour_then_refused(
        self, database: Database
    ) -> None:
        for minute in range(PER_ADDRESS):
            ip = f"198.51.100.{minute}"
            assert ask(database, "a" * 64, ip, NOW + timedelta(minutes=minute)) is None

        refused = ask(database, "a" * 64, "203.0.113.9", NOW + timedelta(minutes=10))

        assert refused is not None
        # Until the oldest request of the hour leaves the window.
        assert refused.retry_after == WINDOW - timedelta(minutes=10)
        assert count_rows(database, MailRequest) == PER_ADDRESS
        later = NOW + WINDOW + timedelta(seconds=1)
        assert ask(database, "a" * 64, "203.0.113.9", later) is None

    def test_other_addresses_are_not_held_up(self, database: Database) -> None:
        for _ in range(PER_ADDRESS):
            ask(database, "a" * 64, None)
        assert ask(database, "a" * 64, None) is not None
        assert ask(database, "b" * 64, None) is None


class TestPerNetwork:
    def test_a_network_asking_for_many_addresses_is_refused(self, database: Database) -> None:
        for index in range(PER_NETWORK):
            assert ask(database, f"{index:064x}", "2001:db8:1:2::7") is None

        # Another address of the same IPv6 /64 counts as the same client; another /64 does not.
        assert ask(database, "f" * 64, "2001:db8:1:2:ffff::1") is not None
        assert ask(database, "f" * 64, "2001:db8:1:3::1") is None

    def test_requests_older_than_the_window_are_deleted(self, database: Database) -> None:
        for index in range(5):
            ask(database, f"{index:064x}", "198.51.100.1")
        ask(database, "e" * 64, "198.51.100.2", NOW + WINDOW + timedelta(minutes=1))

        assert count_rows(database, MailRequest) == 1


def test_parallel_requests_cannot_all_pass_one_count(database: Database) -> None:
    """PostgreSQL: without the advisory lock, every one of these counts the same rows."""

    def one(_: int) -> Throttled | None:
        return ask(database, "c" * 64, None)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one, range(12)))

    assert sum(answer is None for answer in answers) == PER_ADDRESS
    assert count_rows(database, MailRequest) == PER_ADDRESS
