"""What `GET /v1/audit`, `GET /v1/audit/export` and `GET /v1/changes` answer."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

from prefcenter.audit.schemas import AuditEventOut, ScopedAuditEventOut


class AuditEventsOut(BaseModel):
    events: list[AuditEventOut] = Field(description="Matching events, oldest (lowest `seq`) first.")
    next: str | None = Field(
        description="Opaque cursor for the next page (`cursor`); null when no matching event "
        "follows this page at the time of asking."
    )


class ExportFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


class ChangesOut(BaseModel):
    events: list[ScopedAuditEventOut] = Field(
        description="Consent events after the cursor, in commit order; empty when caught up."
    )
    next: str = Field(
        description="Opaque cursor to ask from next time (`after`); never null, and equal to "
        "the cursor sent when nothing new has been committed."
    )
