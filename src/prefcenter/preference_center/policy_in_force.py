"""Owns which privacy policy version the unsubscribe page names: the versions of kind
`privacy_policy`, read at most once every few seconds per process (the page comes in storms
and must stay one read per request), and the one in force picked at each request's time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime

from sqlmodel import Session

from prefcenter.db import Database
from prefcenter.notices.reading import versions_of_kind
from prefcenter.notices.schemas import NoticeKind
from prefcenter.preference_center.schemas import PolicyInForce

# How stale the list may be: a version published with a reason to take effect at once shows on
# the page within this many seconds. One read per process per period, whatever the traffic.
REFRESH_SECONDS = 5.0


class PolicyVersions:
    """The privacy policy versions, newest effective first, refreshed when REFRESH_SECONDS
    old; `in_force(now)` costs no read in between."""

    def __init__(
        self,
        database: Database,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.database = database
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self._versions: list[PolicyInForce] = []
        self._read_at: float | None = None
        self._lock = asyncio.Lock()

    async def in_force(self, now: datetime) -> PolicyInForce | None:
        if self._stale():
            async with self._lock:
                if self._stale():
                    self._versions = await self.database.run_in_transaction(
                        _read, write=False, autocommit=True
                    )
                    self._read_at = self.clock()
        return next((v for v in self._versions if v.effective_at <= now), None)

    def _stale(self) -> bool:
        return self._read_at is None or self.clock() - self._read_at >= self.refresh_seconds


def _read(session: Session) -> list[PolicyInForce]:
    return [
        PolicyInForce(version=v.version, effective_at=v.effective_at, url=v.url)
        for v in versions_of_kind(session, NoticeKind.PRIVACY_POLICY)
    ]


def policy_texts(policy: PolicyInForce | None) -> dict[str, str | None]:
    """What the unsubscribe pages print of it (texts for templating.Pages.render_fast)."""
    if policy is None:
        return {"policy_version": None, "policy_date": None, "policy_url": None}
    return {
        "policy_version": policy.version,
        "policy_date": policy.effective_at.strftime("%Y-%m-%d"),
        "policy_url": policy.url,
    }
