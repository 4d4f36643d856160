"""What `GET /v1/audit` and `GET /v1/audit/export` answer."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

from prefcenter.audit.schemas import AuditEventOut


class AuditEventsOut(BaseModel):
    events: list[AuditEventOut] = Field(description="Matching events, oldest (lowest `seq`) first.")
    next: str | None = Field(
        description="Opaque cursor for the next page (`cursor`); null when no matching event "
        "follows this page at the time of asking."
    )


class ExportFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"
