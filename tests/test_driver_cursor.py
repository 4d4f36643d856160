"""The typed cursors of SQL written on the driver (db.DriverCursor, db.PostgresCursor): the
drivers' own cursors are held to them by mypy here, and each does what the protocol says on
its engine."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any

import psycopg
import pytest

from prefcenter.db import Database
from prefcenter.driver import (
    CopyWriter,
    DriverCursor,
    PostgresCursor,
    driver_cursor,
    postgres_cursor,
)


def sqlite3_cursor_is_a_driver_cursor(cursor: sqlite3.Cursor) -> DriverCursor:
    return cursor  # mypy checks the protocol against the driver's own type


def psycopg_cursor_is_a_postgres_cursor(cursor: psycopg.Cursor[tuple[Any, ...]]) -> PostgresCursor:
    return cursor


def psycopg_copy_is_a_copy_writer(copy: psycopg.Copy) -> CopyWriter:
    return copy


class TestDriverCursor:
    def test_reads_rows_as_tuples_and_iterates(self, database: Database) -> None:
        with database.transaction(write=False) as session:
            connection = session.connection()
            sqlite = connection.dialect.name == "sqlite"
            with closing(driver_cursor(connection)) as cursor:
                one = cursor.execute("SELECT 1, 'a'").fetchone()
                assert one is not None
                assert tuple(one) == (1, "a")
                assert cursor.description is not None
                cursor.execute("SELECT 2 UNION ALL SELECT 3")
                assert [tuple(row) for row in cursor] == [(2,), (3,)]
                marker = "?" if sqlite else "%s"
                cursor.execute(f"SELECT {marker}", (4,))
                assert cursor.fetchmany(5) == [(4,)]
                assert cursor.fetchall() == []

    def test_a_postgres_cursor_is_refused_on_sqlite(self, database: Database) -> None:
        with database.transaction(write=False) as session:
            connection = session.connection()
            if connection.dialect.name == "postgresql":
                with closing(postgres_cursor(connection)) as cursor:
                    row = cursor.execute("SELECT 1", binary=True).fetchone()
                assert row == (1,)
            else:
                with pytest.raises(RuntimeError, match="PostgreSQL cursor"):
                    postgres_cursor(connection)

    def test_the_direct_path_hands_over_a_driver_cursor(self, database: Database) -> None:
        def work(cursor: DriverCursor) -> tuple[Any, ...] | None:
            return cursor.execute("SELECT 7").fetchone()

        assert database.on_connection(work) == (7,)
