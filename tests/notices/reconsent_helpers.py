"""Helpers of the re-consent tests: a clock the test moves, and a topic bound to a policy
whose material second version takes effect later."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

# Every module that reads the clock, loaded before the clock is replaced.
import prefcenter.app
import prefcenter.cli
import prefcenter.db
from tests.notices.helpers import POLICY, publish, put_notice
from tests.support.factories import Headers, Json, make_topic

PAST = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
MOMENT = timedelta(microseconds=1)


class Clock:
    """The service's idea of now: the wall clock until a test sets it."""

    def __init__(self) -> None:
        self.at: datetime | None = None

    def now(self) -> datetime:
        return self.at if self.at is not None else datetime.now(UTC)


def moved_clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Every `prefcenter` module that took `utcnow` from `prefcenter.db` gets the test's
    clock (as tests/faults/shifted_clock.py does for a whole process)."""
    clock = Clock()
    original = prefcenter.db.utcnow
    for name, module in list(sys.modules.items()):
        if name.startswith("prefcenter") and getattr(module, "utcnow", None) is original:
            monkeypatch.setattr(module, "utcnow", clock.now)
    return clock


@dataclass(frozen=True, slots=True)
class Policy:
    """A policy with v1 in force since PAST and v2 (material unless asked) from `v2_at`."""

    v2_at: datetime


def bound_topic(
    client: TestClient,
    admin: Headers,
    key: str = "newsletter",
    *,
    material: bool = True,
    **fields: str,
) -> Policy:
    put_notice(client, admin)
    publish(client, admin, "v1", effective_at=PAST, reason="The first version.", material=False)
    v2 = publish(client, admin, "v2", effective_in=timedelta(days=31), material=material)
    make_topic(client, admin, key, notice=POLICY, **fields)
    return Policy(v2_at=datetime.fromisoformat(v2["effective_at"]))


def eligibility(client: TestClient, headers: Headers, topic: str, *emails: str) -> list[str]:
    response = client.post(
        "/v1/eligibility", headers=headers, json={"topic": topic, "emails": list(emails)}
    )
    assert response.status_code == 200, response.text
    results: list[Json] = response.json()["results"]
    return [str(r["reason"]) for r in results]
