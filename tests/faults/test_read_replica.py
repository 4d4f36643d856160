"""A real streaming replica behind `PREFCENTER_READ_DATABASE_URL`: the heavy reads go to it,
an opt-out made on the primary is seen through it at once (the read waits for the replica to
replay the request's WAL position), and a replica that lags past the wait or is down is passed
over for the primary, logged once, and used again once it is back.

A private primary and its replica (`pg_basebackup -R`), stopped, started and paused by the
tests; never the shared server."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx2
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.pool import NullPool

from prefcenter import metrics, migrations
from prefcenter.apikeys.schemas import Scope
from prefcenter.app import create_app
from prefcenter.db import Database
from tests.faults.cluster import (
    NoPostgresBinaries,
    PrivatePostgres,
    init_cluster,
    init_replica,
)
from tests.support.factories import Headers, Json, make_topic, record_change
from tests.support.harness import issue_key, make_settings, reset_postgres

pytestmark = [pytest.mark.slow, pytest.mark.faults]

ADA = "ada@example.com"
TOPIC = "newsletter"
REPLICA_LOGGER = "prefcenter.replica"
# Generous bounds on waits for the replica itself (catching up after a restart): a bound
# against hanging, never a figure under test.
CATCH_UP_BOUND_S = 60.0


@dataclass(slots=True)
class Pair:
    primary: PrivatePostgres
    replica: PrivatePostgres


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    try:
        primary = init_cluster()
    except NoPostgresBinaries as exc:
        pytest.skip(f"no PostgreSQL server binaries: {exc}")
    try:
        migrations.upgrade(make_settings(primary.url))
        replica = init_replica(primary)
        try:
            yield Pair(primary, replica)
        finally:
            replica.remove()
    finally:
        primary.remove()


def _engine(cluster: PrivatePostgres) -> Engine:
    return create_engine(cluster.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")


def _scalar(cluster: PrivatePostgres, sql: str) -> object:
    engine = _engine(cluster)
    try:
        with engine.connect() as connection:
            return connection.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def pause_replay(replica: PrivatePostgres) -> None:
    _scalar(replica, "SELECT pg_wal_replay_pause()")


def resume_replay(replica: PrivatePostgres) -> None:
    _scalar(replica, "SELECT pg_wal_replay_resume()")


def wait_until_caught_up(pair: Pair, *, paused_ok: bool = False) -> None:
    """Until the replica has replayed everything the primary wrote so far (`paused_ok`: or
    only until it accepts connections, its replay paused)."""
    lsn = _scalar(pair.primary, "SELECT pg_current_wal_lsn()::text")
    deadline = time.monotonic() + CATCH_UP_BOUND_S
    while True:
        try:
            behind = _scalar(
                pair.replica,
                f"SELECT pg_wal_lsn_diff('{lsn}', pg_last_wal_replay_lsn())",
            )
        except Exception:
            behind = None  # still starting
        if behind is not None and float(str(behind)) <= 0:
            return
        if (
            behind is not None
            and paused_ok
            and _scalar(pair.replica, "SELECT pg_is_wal_replay_paused()")
        ):
            return
        assert time.monotonic() < deadline, "the replica never caught up"
        time.sleep(0.05)


@pytest.fixture
def replicated(pair: Pair) -> Pair:
    """Both running, replaying, and the primary's database emptied (and replicated)."""
    pair.primary.ensure_running()
    pair.replica.ensure_running()
    wait_until_caught_up(pair, paused_ok=True)
    resume_replay(pair.replica)  # a test that failed may have left it paused
    reset_postgres(make_url(pair.primary.url))
    wait_until_caught_up(pair)
    return pair


@dataclass(slots=True)
class Service:
    client: TestClient
    admin: Headers
    checker: Headers


@contextmanager
def serving(pair: Pair, *, max_wait_ms: int) -> Iterator[Service]:
    """The app on the primary with the replica for its heavy reads; a topic, and ADA
    subscribed to it (written on the primary, and replayed by the replica before this
    returns)."""
    settings = make_settings(
        pair.primary.url,
        read_database_url=pair.replica.url,
        read_replica_max_wait_ms=max_wait_ms,
        read_replica_retry_s=0,
    )
    database = Database(settings)
    try:
        admin = issue_key(database, Scope.ADMIN, name="admin")
        checker = issue_key(database, Scope.ELIGIBILITY, name="sender")
    finally:
        database.dispose()
    with TestClient(create_app(settings)) as client:
        make_topic(client, admin, TOPIC)
        record_change(client, admin, ADA, "subscribed", topic=TOPIC)
        wait_until_caught_up(pair)
        yield Service(client, admin, checker)


def reason(service: Service, email: str = ADA) -> str:
    answer = service.client.post(
        "/v1/eligibility", headers=service.checker, json={"topic": TOPIC, "emails": [email]}
    )
    assert answer.status_code == 200, answer.text
    result: Json = answer.json()["results"][0]
    return str(result["reason"])


def served_by(server: str) -> float:
    """Heavy reads this process has sent to `server` (replica or primary) so far."""
    value = metrics.instruments().registry.get_sample_value(
        "prefcenter_db_replica_reads_total", {"served_by": server}
    )
    return value or 0.0


def replica_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == REPLICA_LOGGER]


def opt_out(service: Service) -> None:
    record_change(service.client, service.admin, ADA, "unsubscribed", topic=TOPIC)


def test_an_opt_out_is_seen_at_once_through_the_replica(replicated: Pair) -> None:
    with serving(replicated, max_wait_ms=10_000) as service:
        assert reason(service) == "subscribed"
        before = served_by("replica"), served_by("primary")
        opt_out(service)
        assert reason(service) == "unsubscribed"
        assert (served_by("replica"), served_by("primary")) == (before[0] + 1, before[1])


def _replica_is_waiting(replica: PrivatePostgres) -> bool:
    """Whether a session on the replica has looked at its replay position (its last query,
    kept by pg_stat_activity also while it sleeps between looks)."""
    found = _scalar(
        replica,
        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
        "AND query LIKE '%pg_last_wal_replay_lsn%'",
    )
    return bool(found)


def test_a_read_waits_for_the_replica_to_replay_the_opt_out(
    replicated: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    """The replica has the subscription but not yet the opt-out (its replay is paused): the
    read waits on it, and once replay goes on, the replica answers `unsubscribed`. Without
    the wait, the paused replica would have answered `subscribed`."""
    caplog.set_level(logging.INFO, logger=REPLICA_LOGGER)
    with serving(replicated, max_wait_ms=30_000) as service:
        pause_replay(replicated.replica)
        opt_out(service)
        before = served_by("replica"), served_by("primary")
        answers: list[str] = []
        asking = threading.Thread(target=lambda: answers.append(reason(service)))
        asking.start()
        deadline = time.monotonic() + CATCH_UP_BOUND_S
        while not _replica_is_waiting(replicated.replica):
            assert time.monotonic() < deadline, "the read never reached the replica"
            time.sleep(0.01)
        assert answers == [], "answered before the replica had replayed the opt-out"
        resume_replay(replicated.replica)
        asking.join(CATCH_UP_BOUND_S)
        assert answers == ["unsubscribed"]
        assert (served_by("replica"), served_by("primary")) == (before[0] + 1, before[1])
    assert replica_lines(caplog) == []


def test_a_lagging_replica_falls_back_to_the_primary_and_logs_once(
    replicated: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=REPLICA_LOGGER)
    with serving(replicated, max_wait_ms=50) as service:
        pause_replay(replicated.replica)
        opt_out(service)
        before = served_by("primary")
        assert [reason(service) for _ in range(3)] == ["unsubscribed"] * 3
        assert served_by("primary") == before + 3
        lines = replica_lines(caplog)
        assert [(r.levelname, "behind" in r.getMessage()) for r in lines] == [("WARNING", True)]

        resume_replay(replicated.replica)
        wait_until_caught_up(replicated)
        replica_before = served_by("replica")
        assert reason(service) == "unsubscribed"
        assert served_by("replica") == replica_before + 1
        assert [r.levelname for r in replica_lines(caplog)] == ["WARNING", "INFO"]
    assert ADA not in caplog.text


def test_a_replica_that_is_down_falls_back_and_is_used_again_once_back(
    replicated: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=REPLICA_LOGGER)
    with serving(replicated, max_wait_ms=10_000) as service:
        assert reason(service) == "subscribed"  # a pooled connection to the replica
        replicated.replica.stop()
        opt_out(service)
        before = served_by("primary")
        assert [reason(service) for _ in range(3)] == ["unsubscribed"] * 3
        assert served_by("primary") == before + 3
        lines = replica_lines(caplog)
        assert [(r.levelname, "unreachable" in r.getMessage()) for r in lines] == [
            ("WARNING", True)
        ]

        replicated.replica.start()
        wait_until_caught_up(replicated)
        replica_before = served_by("replica")
        assert reason(service) == "unsubscribed"
        assert served_by("replica") == replica_before + 1
        assert [r.levelname for r in replica_lines(caplog)] == ["WARNING", "INFO"]
    assert ADA not in caplog.text


def test_every_heavy_read_goes_to_the_replica(replicated: Pair) -> None:
    """The eligibility stream, both exports, the audit trail's query and export, and lookups
    are served by the replica, and see the opt-out made just before."""
    with serving(replicated, max_wait_ms=10_000) as service:
        opt_out(service)
        client, admin = service.client, service.admin
        reads: dict[str, Callable[[], httpx2.Response]] = {
            "stream": lambda: client.post(
                f"/v1/eligibility/stream?topic={TOPIC}",
                headers={**admin, "Content-Type": "text/plain"},
                content=f"{ADA}\n",
            ),
            "suppressions": lambda: client.get("/v1/suppressions", headers=admin),
            "audience": lambda: client.get(f"/v1/topics/{TOPIC}/audience", headers=admin),
            "audit": lambda: client.get("/v1/audit", headers=admin),
            "audit export": lambda: client.get("/v1/audit/export", headers=admin),
            "lookup": lambda: client.post(
                "/v1/contacts/lookup", headers=admin, json={"emails": [ADA]}
            ),
        }
        for name, read in reads.items():
            before = served_by("replica"), served_by("primary")
            answer = read()
            assert answer.status_code == 200, (name, answer.text)
            assert served_by("replica") > before[0], name
            assert served_by("primary") == before[1], name
            if name == "stream":
                assert answer.text.splitlines()[1] == f"{ADA},false,unsubscribed"
            if name == "audience":
                assert ADA not in answer.text
            if name == "lookup":
                status = answer.json()["contacts"][0]["subscriptions"][0]["status"]
                assert status == "unsubscribed"
