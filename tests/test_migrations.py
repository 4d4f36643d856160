"""Migrations build the schema on both engines, go down and up again, and match the models."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, make_url, text
from sqlalchemy.exc import DBAPIError

from prefcenter import migrations
from prefcenter.settings import Settings
from prefcenter.tables import metadata
from tests.support.harness import ENGINES, POSTGRES_ADMIN_URL, make_settings


@pytest.fixture(params=ENGINES)
def empty_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings for a database with no schema at all."""
    if request.param == "sqlite":
        yield make_settings(f"sqlite:///{tmp_path / 'empty.db'}")
        return
    request.getfixturevalue("postgres_database")  # fails the run if PostgreSQL is down
    admin_url = make_url(POSTGRES_ADMIN_URL)
    name = f"prefcenter_mig_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_settings(admin_url.set(database=name).render_as_string(hide_password=False))
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def schema_drift(settings: Settings) -> list[object]:
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def table_names(settings: Settings) -> set[str]:
    engine = create_engine(settings.database_url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_leaves_no_drift(empty_settings: Settings) -> None:
    migrations.upgrade(empty_settings)
    assert schema_drift(empty_settings) == []
    assert set(metadata.tables) <= table_names(empty_settings)

    migrations.downgrade(empty_settings, "base")
    assert table_names(empty_settings) <= {"alembic_version"}

    migrations.upgrade(empty_settings)
    assert schema_drift(empty_settings) == []


def test_the_address_index_carries_the_contact_id_on_postgresql(empty_settings: Settings) -> None:
    """Migration 0006: what eligibility's index-only probes need, and what alembic's
    comparison does not see (it ignores INCLUDE); down to 0005 it is the plain constraint."""

    def address_index() -> tuple[str, bool]:
        engine = create_engine(empty_settings.database_url)
        try:
            with engine.connect() as connection:
                if empty_settings.is_sqlite:
                    table_sql = connection.execute(
                        text(
                            "SELECT sql FROM sqlite_master "
                            "WHERE type = 'table' AND name = 'contact'"
                        )
                    ).scalar_one()
                    return str(table_sql), "uq_contact_address UNIQUE (address)" in table_sql
                definition = connection.execute(
                    text("SELECT indexdef FROM pg_indexes WHERE indexname = 'uq_contact_address'")
                ).scalar_one()
                unique = connection.execute(
                    text(
                        "SELECT count(*) = 1 FROM pg_constraint "
                        "WHERE conname = 'uq_contact_address' AND contype = 'u'"
                    )
                ).scalar_one()
                return str(definition), bool(unique)
        finally:
            engine.dispose()

    migrations.upgrade(empty_settings)
    definition, unique = address_index()
    assert unique
    if empty_settings.is_sqlite:
        return  # the constraint as before: SQLite's indexes carry the row id
    assert definition.endswith("(address) INCLUDE (id)"), definition
    migrations.downgrade(empty_settings, "0005")
    definition, unique = address_index()
    assert unique
    assert definition.endswith("(address)"), definition


def test_a_first_answer_is_compressed_with_lz4_on_postgresql(empty_settings: Settings) -> None:
    """Migration 0020: the Idempotency-Key record's body (some 200 KB for a batch) is
    compressed with lz4 where the server has it; down to 0019 it is the server's default."""
    if empty_settings.is_sqlite:
        pytest.skip("SQLite does not compress values")

    def compression() -> str:
        engine = create_engine(empty_settings.database_url)
        try:
            with engine.connect() as connection:
                return str(
                    connection.execute(
                        text(
                            "SELECT attcompression FROM pg_attribute "
                            "WHERE attrelid = 'idempotency_record'::regclass "
                            "AND attname = 'response_body'"
                        )
                    ).scalar_one()
                )
        finally:
            engine.dispose()

    migrations.upgrade(empty_settings)
    assert compression() == "l"
    migrations.downgrade(empty_settings, "0019_outbox_order")
    assert compression() == ""


def test_evidence_and_free_text_lose_their_foreign_keys_and_keep_rows_and_triggers(
    empty_settings: Settings,
) -> None:
    """Migration 0021: no key from `audit_evidence` and `audit_free_text` to the events; their
    rows stay and updates are still refused (SQLite copies each table to drop its key); down
    to 0020 the keys are back, as they were."""
    parts = ("audit_evidence", "audit_free_text")

    def foreign_keys() -> dict[str, list[str | None]]:
        engine = create_engine(empty_settings.database_url)
        try:
            inspector = inspect(engine)
            return {t: [k["name"] for k in inspector.get_foreign_keys(t)] for t in parts}
        finally:
            engine.dispose()

    def rows_and_refusals() -> tuple[list[tuple[Any, ...]], list[str]]:
        engine = create_engine(empty_settings.database_url)
        refusals: list[str] = []
        try:
            with engine.connect() as connection:
                rows = [tuple(connection.execute(text(f"SELECT * FROM {t}")).one()) for t in parts]
            for table, column in zip(parts, ("document", "reason"), strict=True):
                try:
                    with engine.begin() as connection:
                        connection.execute(text(f"UPDATE {table} SET {column} = {column}"))
                except DBAPIError as refused:
                    refusals.append(table if "append-only" in str(refused) else str(refused))
        finally:
            engine.dispose()
        return rows, refusals

    migrations.upgrade(empty_settings, "0020_idempotency_lz4")
    engine = create_engine(empty_settings.database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO audit_event (seq, id, kind, recorded_at, occurred_at, outcome, "
                    "actor, source, canonical, hash) VALUES (1, 'e1', 'consent_change', "
                    ":at, :at, 'applied', 'api:test', 'api', :canonical, :hash)"
                ),
                {"at": "2026-12-07 00:00:00", "canonical": b"{}", "hash": "0" * 64},
            )
            connection.execute(text("INSERT INTO audit_evidence VALUES (1, :d)"), {"d": b"{}"})
            connection.execute(text("INSERT INTO audit_free_text VALUES (1, NULL, 'why')"))
    finally:
        engine.dispose()
    before = rows_and_refusals()
    assert foreign_keys() == {
        "audit_evidence": ["fk_audit_evidence_seq_audit_event"],
        "audit_free_text": ["fk_audit_free_text_seq_audit_event"],
    }

    migrations.upgrade(empty_settings)
    assert foreign_keys() == {"audit_evidence": [], "audit_free_text": []}
    assert rows_and_refusals() == before == ([(1, b"{}"), (1, None, "why")], list(parts))

    migrations.downgrade(empty_settings, "0020_idempotency_lz4")
    assert foreign_keys()["audit_evidence"] == ["fk_audit_evidence_seq_audit_event"]
    assert rows_and_refusals() == before


def test_subscriptions_by_topic_are_found_through_the_longer_index(
    empty_settings: Settings,
) -> None:
    """Migration 0022: `subscription` keeps `(topic_id, contact_id, status)` and loses the index
    of `topic_id` alone, which it begins with; a lookup by topic still goes through an index
    (the longer one) on both engines; down to 0021 the short index is back."""

    def indexes() -> list[str]:
        engine = create_engine(empty_settings.database_url)
        try:
            return sorted(str(i["name"]) for i in inspect(engine).get_indexes("subscription"))
        finally:
            engine.dispose()

    def plan_of_a_topic_lookup() -> str:
        query = "SELECT contact_id FROM subscription WHERE topic_id = 7"
        engine = create_engine(empty_settings.database_url)
        try:
            with engine.begin() as connection:
                if empty_settings.is_sqlite:
                    rows = connection.execute(text(f"EXPLAIN QUERY PLAN {query}")).all()
                    return " ".join(str(row[-1]) for row in rows)
                connection.execute(text("SET LOCAL enable_seqscan = off"))
                return " ".join(connection.execute(text(f"EXPLAIN {query}")).scalars())
        finally:
            engine.dispose()

    migrations.upgrade(empty_settings, "0021_audit_parts_without_fk")
    assert "ix_subscription_topic_id" in indexes()

    migrations.upgrade(empty_settings)
    assert indexes() == ["ix_subscription_topic_id_contact_id_status"]
    assert "ix_subscription_topic_id_contact_id_status" in plan_of_a_topic_lookup()

    migrations.downgrade(empty_settings, "0021_audit_parts_without_fk")
    assert "ix_subscription_topic_id" in indexes()


def test_audit_head_starts_at_zero(empty_settings: Settings) -> None:
    migrations.upgrade(empty_settings)
    engine = create_engine(empty_settings.database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT id, seq FROM audit_head")).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [(1, 0)]


def test_there_is_a_single_head() -> None:
    settings = make_settings("sqlite:///unused.db")
    assert migrations.head_revision(settings) is not None


def test_readiness_waits_only_for_missing_migrations() -> None:
    settings = make_settings("sqlite:///unused.db")
    head = migrations.head_revision(settings)
    known = migrations.known_revisions(settings)
    assert head in known
    assert migrations.is_behind(None, head=head, known=known)
    assert not migrations.is_behind(head, head=head, known=known)
    # A revision this code does not know was written by a newer release: still ready.
    assert not migrations.is_behind("f00dcafe", head=head, known=known)
    older = sorted(known - {head})
    for revision in older:
        assert migrations.is_behind(revision, head=head, known=known)
