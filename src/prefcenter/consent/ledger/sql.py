"""Owns the SQL shapes the ledger's set-based statements share across engines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import ARRAY, any_, bindparam, cast
from sqlalchemy.types import NullType
from sqlmodel import Session


def postgres_session(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def among(column: Any, values: Sequence[Any], item_type: Any, *, postgres: bool) -> Any:
    """`column IN values`; on PostgreSQL as `= ANY(<one array parameter>)`, which costs the
    same whatever the count (an IN list renders and binds each value: for a thousand, more
    than the query itself).

    The array goes as its text (`{"a","b"}`, `{1,2}`), written by orjson in one call: a list
    parameter goes through the driver's pure-Python list dumper element by element (about a
    millisecond of CPU per thousand strings). Untyped, so that the server takes it for the
    array type at once and plans with its values, as it does a list parameter (an array
    unpacked from JSON in the query is planned blind, and a subscription read scanned the
    topic's every row). JSON's escapes are the array text's for `"` and backslash only: a
    value with another (a control character) goes as a list."""
    if not postgres:
        return column.in_(values)
    array = array_parameter(values)
    if isinstance(array, list):
        return column == any_(bindparam(None, array, type_=ARRAY(item_type)))
    return column == any_(cast(bindparam(None, array, type_=NullType()), ARRAY(item_type)))


def array_parameter(values: Sequence[Any]) -> str | list[Any]:
    """`values` as one PostgreSQL array parameter (`among`): its text, or the list itself
    when a value holds a character that JSON escapes otherwise than the array text does."""
    encoded = orjson.dumps(list(values)).decode()
    if "\\" in encoded:
        return list(values)
    return "{" + encoded[1:-1] + "}"
