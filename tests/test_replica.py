"""`PREFCENTER_READ_DATABASE_URL` on both engines: refused beside SQLite; on PostgreSQL a server
that is no standby (here the primary itself) is never read from as a replica: its reads go to
the primary, and that is logged once. The real replica is tested in tests/faults."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import text

from prefcenter.db import Database
from prefcenter.replica import ReplicaState
from prefcenter.settings import ConfigError
from tests.support.harness import make_settings


def test_without_a_replica_reads_use_the_database_itself(database_url: str) -> None:
    database = Database(make_settings(database_url))
    try:
        assert database.replica is None
        assert database.reads() is database
    finally:
        database.dispose()


def test_a_server_that_is_no_standby_is_passed_over_and_logged_once(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(database_url, read_database_url=database_url.replace("+psycopg", ""))
    if settings.is_sqlite:
        with pytest.raises(ConfigError, match="PREFCENTER_READ_DATABASE_URL"):
            Database(settings)
        return
    settings = make_settings(database_url, read_database_url=database_url)
    caplog.set_level(logging.INFO, logger="prefcenter.replica")
    database = Database(settings)
    try:
        replica = database.replica
        assert replica is not None
        for _ in range(3):
            reads = database.reads()
            assert reads is not database
            with reads.transaction(write=False) as session:
                assert session.execute(text("SELECT pg_is_in_recovery()")).scalar_one() is False
                assert session.get_bind() is database.engine
        assert replica.state is ReplicaState.NOT_A_STANDBY
        lines = [r for r in caplog.records if r.name == "prefcenter.replica"]
        assert [r.levelname for r in lines] == ["WARNING"]
        assert "not a standby" in lines[0].getMessage()
    finally:
        database.dispose()


@pytest.mark.parametrize("url", ["mysql://db/prefcenter", "sqlite:///replica.db"])
def test_only_a_postgresql_replica_is_accepted(url: str) -> None:
    settings = make_settings(
        "postgresql+psycopg://postgres@127.0.0.1:5432/prefcenter", read_database_url=url
    )
    with pytest.raises(ConfigError, match="PostgreSQL streaming replica"):
        Database(settings)
