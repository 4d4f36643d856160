"""What `GET /v1/changes` answers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from prefcenter.audit.schemas import AuditEventFields


def _withheld(value: dict[str, Any] | None) -> bool:
    return value is None


class ChangeEventOut(AuditEventFields):
    """A consent event as `/v1/audit` shows it; `evidence` and `context` are left out (not
    null, not empty) unless the key may read the audit trail: a feed for mail tools must not
    hand every reader each person's client address, user agent and ticket ids."""

    evidence: dict[str, Any] | None = Field(
        default=None,
        exclude_if=_withheld,
        description="Only for a key that also has `audit:read`.",
    )
    context: dict[str, Any] | None = Field(
        default=None,
        exclude_if=_withheld,
        description="The request the change came with (client address, user agent, "
        "idempotency key); only for a key that also has `audit:read`.",
    )


class ChangesOut(BaseModel):
    events: list[ChangeEventOut] = Field(
        description="Consent events after the cursor, in commit order; empty when caught up."
    )
    next: str = Field(
        description="Opaque cursor to ask from next time (`after`); never null, and equal to "
        "the cursor sent when nothing new has been committed."
    )
