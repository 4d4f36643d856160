"""What `GET /v1/changes` answers."""

from __future__ import annotations

from pydantic import BaseModel, Field

from prefcenter.audit.schemas import ScopedAuditEventOut


class ChangesOut(BaseModel):
    events: list[ScopedAuditEventOut] = Field(
        description="Consent events after the cursor, in commit order; empty when caught up."
    )
    next: str = Field(
        description="Opaque cursor to ask from next time (`after`); never null, and equal to "
        "the cursor sent when nothing new has been committed."
    )
