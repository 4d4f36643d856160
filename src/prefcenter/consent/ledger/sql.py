"""Owns the SQL shapes the ledger's set-based statements share across engines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ARRAY, any_, bindparam
from sqlmodel import Session


def postgres_session(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def among(column: Any, values: Sequence[Any], item_type: Any, *, postgres: bool) -> Any:
    """`column IN values`; on PostgreSQL as `= ANY(<one array parameter>)`, which costs the
    same whatever the count (an IN list renders and binds each value: for a thousand, more
    than the query itself)."""
    if postgres:
        return column == any_(bindparam(None, list(values), type_=ARRAY(item_type)))
    return column.in_(values)
