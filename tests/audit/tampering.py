"""Edits to the audit tables as their owner would make them, around the triggers: what an
attacker with database access can do, and what verification must catch; and what such a
reader finds in every table."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import orjson
from sqlalchemy import Connection, create_engine, inspect, text

from prefcenter.audit.canonical import GENESIS_HASH, chain_hash


@contextmanager
def triggers_off(database_url: str) -> Iterator[Connection]:
    """A connection on which the append-only triggers do not fire; committed at the end.

    PostgreSQL: `session_replication_role = replica` (superuser) skips ordinary triggers.
    SQLite has no such switch: the triggers are dropped and put back as they were.
    """
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SET LOCAL session_replication_role = replica"))
                yield connection
                return
            triggers = connection.execute(
                text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
            ).all()
            for name, _ in triggers:
                connection.execute(text(f'DROP TRIGGER "{name}"'))
            yield connection
            for _, sql in triggers:
                connection.execute(text(sql))
    finally:
        engine.dispose()


def tamper(database_url: str, sql: str, params: Mapping[str, Any] | None = None) -> None:
    with triggers_off(database_url) as connection:
        connection.execute(text(sql), dict(params or {}))


def fetch(database_url: str, sql: str, params: Mapping[str, Any] | None = None) -> list[Any]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(text(sql), dict(params or {})).all())
    finally:
        engine.dispose()


def rechain(database_url: str) -> None:
    """Recompute every stored hash and the head from the stored canonical bytes: what an
    attacker does after an edit so that the chain verifies on its own again."""
    rows = fetch(database_url, "SELECT seq, canonical FROM audit_event ORDER BY seq")
    prev = GENESIS_HASH
    with triggers_off(database_url) as connection:
        for seq, canonical in rows:
            prev = chain_hash(prev, bytes(canonical))
            connection.execute(
                text("UPDATE audit_event SET hash = :hash WHERE seq = :seq"),
                {"hash": prev.hex(), "seq": seq},
            )
        connection.execute(
            text("UPDATE audit_head SET seq = :seq, hash = :hash WHERE id = 1"),
            {"seq": rows[-1][0] if rows else 0, "hash": prev.hex()},
        )


def tables_holding(database_url: str, needle: str) -> list[str]:
    """Every `table.column` of the database in which some row holds `needle` (as UTF-8, in
    text, in bytes, or inside JSON), read as the database's owner reads them."""
    wanted = needle.encode("utf-8")
    found: set[str] = set()
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            for table in inspect(connection).get_table_names():
                result = connection.execute(text(f'SELECT * FROM "{table}"'))
                columns = list(result.keys())
                for row in result:
                    for column, value in zip(columns, row, strict=True):
                        if wanted in _as_bytes(value):
                            found.add(f"{table}.{column}")
    finally:
        engine.dispose()
    return sorted(found)


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict | list):
        return orjson.dumps(value)
    return b""
