"""The pure rules of notices: the notice period, and which version a consent may name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefcenter.notices.rules import (
    earliest_effective_at,
    needs_reason,
    split_ref,
    superseded_at,
)

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def test_the_earliest_date_is_the_period_after_publishing() -> None:
    assert earliest_effective_at(T0, period_days=30) == T0 + timedelta(days=30)


def test_sooner_than_the_period_needs_a_reason_and_the_period_itself_does_not() -> None:
    assert needs_reason(T0 + timedelta(days=3), published_at=T0, period_days=30)
    assert not needs_reason(T0 + timedelta(days=30), published_at=T0, period_days=30)
    assert not needs_reason(T0, published_at=T0, period_days=0)


def test_a_reference_splits_at_its_at_sign() -> None:
    assert split_ref("privacy@2026-12") == ("privacy", "2026-12")


def test_a_version_is_superseded_once_the_next_one_took_effect() -> None:
    assert not superseded_at(T0, next_effective_at=None)
    assert not superseded_at(T0, next_effective_at=T0 + timedelta(seconds=1))
    assert superseded_at(T0, next_effective_at=T0)
