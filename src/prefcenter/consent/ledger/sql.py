"""Owns the SQL shapes the ledger's set-based statements share across engines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import JSON, String, any_, bindparam, cast, func, select
from sqlmodel import Session


def postgres_session(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def among(column: Any, values: Sequence[Any], item_type: Any, *, postgres: bool) -> Any:
    """`column IN values`; on PostgreSQL as `= ANY(<one parameter>)`, which costs the same
    whatever the count (an IN list renders and binds each value: for a thousand, more than
    the query itself). The values go as one JSON text, which the server unpacks into an array
    of `item_type`: a list parameter goes through the driver's pure-Python list dumper element
    by element (about a millisecond of CPU per thousand strings)."""
    if postgres:
        values_json = bindparam(None, orjson.dumps(list(values)).decode(), type_=String())
        elements = func.json_array_elements_text(cast(values_json, JSON))
        return column == any_(func.array(select(cast(elements, item_type)).scalar_subquery()))
    return column.in_(values)
