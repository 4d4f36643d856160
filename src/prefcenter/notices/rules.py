"""Pure rules of notices: how soon a version may take effect, and whether a consent may name
a version at the time it was given; and re-consent: which version a consent is given under,
and which subscriptions a material version asks to be given again."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta


def earliest_effective_at(published_at: datetime, *, period_days: int) -> datetime:
    """The soonest a version published at `published_at` may take effect without a reason:
    people are told `period_days` before a change applies to them."""
    return published_at + timedelta(days=period_days)


def needs_reason(effective_at: datetime, *, published_at: datetime, period_days: int) -> bool:
    """Whether taking effect at `effective_at` is sooner than the notice period allows."""
    return effective_at < earliest_effective_at(published_at, period_days=period_days)


def split_ref(ref: str) -> tuple[str, str]:
    """`<key>@<version>` as (key, version); the key holds no `@`."""
    key, _, version = ref.partition("@")
    return key, version


def superseded_at(occurred_at: datetime, *, next_effective_at: datetime | None) -> bool:
    """Whether a version had been replaced when a consent was given at `occurred_at`:
    the next version (by effective_at) had taken effect by then. A version not yet in force
    ("about to be") is not superseded: a person may be shown the coming text."""
    return next_effective_at is not None and next_effective_at <= occurred_at


@dataclass(frozen=True, slots=True)
class VersionFacts:
    """What re-consent needs of a version: its row id, when it takes effect, whether material."""

    id: int
    effective_at: datetime
    material: bool


@dataclass(frozen=True, slots=True)
class Reconsent:
    """What a subscription to a topic bound to a notice must stand on at some time, once a
    material version of the notice took effect (`since`, its effective_at).

    A subscription stands when it was given under that version or a later one (`standing`:
    named before it took effect included). One given under an earlier version (`older`) must
    be given again. One that names no version of this notice (given while the topic was
    unbound, or by a writer that records none) counts as given under the version in force at
    its `occurred_at`: it stands when that was `since` or later."""

    since: datetime
    standing: frozenset[int]
    older: frozenset[int]

    def required(self, version_id: int | None, occurred_at: datetime) -> bool:
        if version_id in self.standing:
            return False
        if version_id in self.older:
            return True
        return occurred_at < self.since


def reconsent_at(versions: Sequence[VersionFacts], *, now: datetime) -> Reconsent | None:
    """The re-consent a notice asks for at `now`: from its newest material version in force
    (by effective_at, then publication order); None when none is in force (nothing is asked).
    A non-material version never asks: it only moves what counts as standing forward."""
    ordered = sorted(versions, key=lambda v: (v.effective_at, v.id))
    latest = None
    for index, version in enumerate(ordered):
        if version.effective_at > now:
            break
        if version.material:
            latest = index
    if latest is None:
        return None
    return Reconsent(
        since=ordered[latest].effective_at,
        standing=frozenset(v.id for v in ordered[latest:]),
        older=frozenset(v.id for v in ordered[:latest]),
    )


def version_given(
    versions: Sequence[tuple[int, str, datetime]], *, named: str | None, at: datetime
) -> int | None:
    """The version (row id) a consent given at `at` is given under: the one it names (its
    label, when it names this notice), else the one in force at `at` (None: none was)."""
    if named is not None:
        for version_id, label, _ in versions:
            if label == named:
                return version_id
    in_force = [(effective_at, version_id) for version_id, _, effective_at in versions]
    in_force = [v for v in in_force if v[0] <= at]
    return max(in_force)[1] if in_force else None


def mark_changes(current: str, marked: str) -> bool | None:
    """Whether marking a recipient `marked` (sent, failed, bounced) changes what is recorded of
    them: False when it is what they are marked already (marking twice records nothing), None
    when refused. A bounce is final: a later `sent` is a sender's retry report that came late,
    and it would hide that the address does not take mail. A failed delivery may be marked
    sent after a retry, and a sent one bounced."""
    if current == marked:
        return False
    if current == "bounced":
        return None
    return True
