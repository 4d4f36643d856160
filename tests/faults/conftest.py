"""Fixtures of the fault tests: a PostgreSQL cluster of their own that they may stop."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import make_url

from prefcenter import migrations
from tests.faults.cluster import NoPostgresBinaries, PrivatePostgres, init_cluster
from tests.support.harness import make_settings, reset_postgres


@pytest.fixture(scope="session")
def private_cluster() -> Iterator[PrivatePostgres]:
    """Started and migrated once per run; skipped only where PostgreSQL is not installed."""
    try:
        cluster = init_cluster()
    except NoPostgresBinaries as exc:
        pytest.skip(f"no PostgreSQL server binaries: {exc}")
    try:
        migrations.upgrade(make_settings(cluster.url))
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def private_postgres(private_cluster: PrivatePostgres) -> PrivatePostgres:
    """The private cluster, running, its database emptied."""
    private_cluster.ensure_running()
    reset_postgres(make_url(private_cluster.url))
    return private_cluster


# Figures the fault tests measured (recovery times), shown at the end of the run: measured,
# never asserted beyond a generous bound (speed belongs in bench/).
_MEASURED: list[str] = []


@pytest.fixture
def measured() -> Callable[[str], None]:
    return _MEASURED.append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _MEASURED:
        terminalreporter.section("faults: measured")
        for line in _MEASURED:
            terminalreporter.write_line(line)
