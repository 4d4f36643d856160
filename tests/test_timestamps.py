"""How the API reads a point in time (`prefcenter.timestamps`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import TypeAdapter, ValidationError

from prefcenter.timestamps import Rfc3339Bound, Rfc3339DateTime

TIME = TypeAdapter(Rfc3339DateTime)
BOUND = TypeAdapter(Rfc3339Bound)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-25T12:00:00Z", datetime(2026, 11, 25, 12, tzinfo=UTC)),
        ("2026-11-25t13:00:00.5+01:00", datetime(2026, 11, 25, 12, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_rfc3339_text_is_read_in_utc(text: str, expected: datetime) -> None:
    for adapter in (TIME, BOUND):
        value = adapter.validate_python(text)
        assert value == expected
        assert value.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("text", "clamped"),
    [
        ("0001-01-01T00:00:00+01:00", datetime.min.replace(tzinfo=UTC)),
        ("9999-12-31T23:59:59-01:00", datetime.max.replace(tzinfo=UTC)),
    ],
)
def test_a_time_with_no_utc_equivalent_is_refused_but_a_bound_is_clamped(
    text: str, clamped: datetime
) -> None:
    with pytest.raises(ValidationError, match="out of range once converted to UTC"):
        TIME.validate_python(text)
    assert BOUND.validate_python(text) == clamped


@pytest.mark.parametrize(
    "given", ["0.5", "1700000000", "2026-11-25", "2026-11-25T12:00:00", "2026-11-25 12:00:00Z", 0.5]
)
def test_anything_looser_is_refused(given: object) -> None:
    for adapter in (TIME, BOUND):
        with pytest.raises(ValidationError):
            adapter.validate_python(given)


def test_an_aware_datetime_object_is_taken_as_is() -> None:
    given = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert TIME.validate_python(given) == given
