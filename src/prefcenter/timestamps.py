"""Owns how the API takes a point in time: RFC 3339 text with an offset, nothing looser."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BeforeValidator

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339_text(value: Any) -> Any:
    """Only RFC 3339 text with an offset: pydantic alone would also take Unix times (`0.5`)
    and dates without a time, which the OpenAPI `date-time` format does not allow."""
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2026-11-25T12:00:00Z")
    if not isinstance(value, str | datetime):
        raise ValueError("must be an RFC 3339 date-time string with an offset")  # noqa: TRY004
    return value


def _in_utc(value: datetime) -> datetime:
    """In UTC. `0001-01-01T00:00:00+14:00` parses, but no UTC time exists for it: refused
    (it would fail on storing, a 500)."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


def _in_utc_clamped(value: datetime) -> datetime:
    """In UTC; a bound at the edge of the calendar whose offset carries it past year 1 or 9999
    is clamped to the first or last representable instant, which is what it means to every
    comparison made with it."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        edge = datetime.min if value.year == 1 else datetime.max  # noqa: DTZ901 (zoned next)
        return edge.replace(tzinfo=UTC)


Rfc3339DateTime = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text), AfterValidator(_in_utc)]
"""A point in time given to be stored: RFC 3339 with an offset, read in UTC."""

Rfc3339Bound = Annotated[
    AwareDatetime, BeforeValidator(_rfc3339_text), AfterValidator(_in_utc_clamped)
]
"""A bound of a time filter (`since`, `until`): RFC 3339 with an offset, read in UTC, clamped
to the calendar."""
