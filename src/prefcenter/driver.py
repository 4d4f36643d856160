"""SQL written straight on the driver (sqlite3, psycopg), typed: the cursor's protocol, the
cursor of a SQLAlchemy connection's own driver, and `%(name)s` parameters in each driver's
style. Knows no domain and no transaction (db.py owns those)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol, Self

from psycopg.adapt import AdaptersMap
from sqlalchemy.engine import Connection


class DriverCursor(Protocol):
    """The part of a DB-API 2.0 cursor that SQL written straight on the driver uses (sqlite3's
    and psycopg's both have it: tests/test_driver_cursor.py). Rows are tuples; the caller
    closes the cursor (`contextlib.closing`)."""

    @property
    def description(self) -> Sequence[Any] | None: ...
    @property
    def rowcount(self) -> int: ...
    def execute(self, sql: str, parameters: Any = ..., /) -> Self: ...
    def executemany(self, sql: str, parameters: Iterable[Any], /) -> object: ...
    def fetchone(self) -> tuple[Any, ...] | None: ...
    def fetchmany(self, size: int = ..., /) -> list[tuple[Any, ...]]: ...
    def fetchall(self) -> list[tuple[Any, ...]]: ...
    def __iter__(self) -> Iterator[tuple[Any, ...]]: ...
    def close(self) -> None: ...


class CopyWriter(Protocol):
    """psycopg's `Copy` as `COPY … FROM STDIN` writes it."""

    def set_types(self, types: Sequence[str], /) -> None: ...
    def write_row(self, row: Sequence[Any], /) -> None: ...
    def write(self, buffer: bytes, /) -> None: ...


class PostgresConnection(Protocol):
    """psycopg's connection, as far as its cursors' users need it: a pipeline, in which each
    statement is sent as it is executed and its results are read when first fetched."""

    def pipeline(self) -> AbstractContextManager[object]: ...


class PostgresCursor(DriverCursor, Protocol):
    """psycopg's cursor: results in binary on request, streamed rows, `COPY`, statements
    prepared on request, its connection, and its own loaders of values (`adapters`)."""

    @property
    def connection(self) -> PostgresConnection: ...
    @property
    def adapters(self) -> AdaptersMap: ...
    def execute(
        self,
        sql: str,
        parameters: Any = ...,
        /,
        *,
        prepare: bool | None = ...,
        binary: bool | None = ...,
    ) -> Self: ...
    def copy(self, statement: str, /) -> AbstractContextManager[CopyWriter]: ...
    def stream(
        self, sql: str, parameters: Any = ..., /, *, binary: bool | None = ..., size: int = ...
    ) -> Iterator[tuple[Any, ...]]: ...


def driver_cursor(connection: Connection) -> DriverCursor:
    """A new cursor of the driver's own, in the connection's transaction."""
    cursor: DriverCursor = _driver_of(connection).cursor()
    return cursor


def postgres_cursor(connection: Connection) -> PostgresCursor:
    """`driver_cursor` on a PostgreSQL connection."""
    if connection.dialect.name != "postgresql":
        raise RuntimeError(f"a PostgreSQL cursor asked of {connection.dialect.name}")
    cursor: PostgresCursor = _driver_of(connection).cursor()
    return cursor


@contextmanager
def postgres_pipeline(connection: Connection) -> Iterator[None]:
    """psycopg's pipeline mode on the connection for the block: each statement goes to the
    server as soon as it is executed, without waiting for the previous one's result, so the
    server works while Python goes on; the block's end waits for them all (and raises the
    first error). A statement's rows are read (fetch*) after the block."""
    if connection.dialect.name != "postgresql":
        raise RuntimeError(f"a PostgreSQL pipeline asked of {connection.dialect.name}")
    with _driver_of(connection).pipeline():
        yield


def _driver_of(connection: Connection) -> Any:
    driver = connection.connection.driver_connection
    if driver is None:
        raise RuntimeError("the connection is closed")
    return driver


_PYFORMAT_PARAMETER = re.compile(r"%\((\w+)\)s")


def driver_sql(pyformat: str, *, sqlite: bool) -> str:
    """SQL written with `%(name)s` parameters (psycopg's style) in the driver's own style:
    `:name` for sqlite3. For `Database.run_on_connection`; build it once, at import."""
    return _PYFORMAT_PARAMETER.sub(r":\1", pyformat) if sqlite else pyformat
